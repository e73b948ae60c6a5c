pytest_plugins = ["tests.support.processes"]
