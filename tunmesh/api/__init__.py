"""The control API port: hardened site, root klein app, mount points."""
