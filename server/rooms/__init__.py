"""Rooms: the per-room hubs (:mod:`.hub`), the brokers that sequence and carry a room's
events (:mod:`.broker`) and the single-hub baseline (:mod:`.baseline`). Imports
:mod:`server.transport`, :mod:`server.ops` and :mod:`server.wire`."""
