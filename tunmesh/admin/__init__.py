"""The local admin endpoint: ``tunmesh status`` and ``tunmesh reload`` over a UNIX socket (issue 8).

``status`` builds the node's view (:mod:`tunmesh.admin.status`), ``hints`` turns failure reasons into
what to check, ``protocol`` is the one-request-per-connection JSON exchange, ``service`` owns the socket
file, ``client`` and ``render`` are the command's side. docs/security.md gives the threat model.
"""
