"""Security: settings, TLS, logins, the guard of every link, authorization.

``from yotonnet.security import Security`` keeps working: the settings live in
:mod:`.settings`; TLS endpoints in :mod:`.tls` (certificates for development
in :mod:`.certs`); twisted.cred checkers in :mod:`.auth`; the local secret of
an OS user in :mod:`.localsecret`; each side's part of a link's
authentication in :mod:`.linkauth`; the guard (admission, gates, identities)
in :mod:`.guard`; permission rules in :mod:`.authz`; who owns a local socket
in :mod:`.peercred`.
"""

from .settings import DialCredentials, Security, SecurityError, merge, parse_table

__all__ = ["Security", "SecurityError", "DialCredentials", "parse_table", "merge"]
