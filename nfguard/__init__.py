"""nfguard: a host egress firewall for Linux built on NFQUEUE."""

__version__ = "0.1.0"
