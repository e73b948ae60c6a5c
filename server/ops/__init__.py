"""Operations: settings (:mod:`.config`), metrics, logs, the heap and the worker supervisor.
Imports only :mod:`server.wire`."""
