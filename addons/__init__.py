"""The gateway: small mitmproxy addons, one concern each, assembled in `addons/mindrouter.py`."""
