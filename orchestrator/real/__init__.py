"""The real world: node processes (`cluster`), the switchboard every message crosses
(`switchboard`), ZeroMQ clients (`client`), the nodes' event logs followed from disk
(`watch`), the `World` over all of them (`world`), and `cutover run` (`run`).
"""
