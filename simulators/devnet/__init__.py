"""The offline network: a hub, 国保連 and gateways on loopback, synthetic people, the demo.

The top of the simulators: nothing below imports it.
"""
