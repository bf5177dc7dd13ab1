"""The benchmark harness (issue 7): the real stack under an open-loop load of signed webhooks.

`wa-router bench` / `make bench`. Each part runs in its own process: the Meta simulator, the gateway
(with its Ray instance and actors), the simulated agents on WebSockets and the load generator.
"""
