"""Who is calling the coordinator: API tokens, console sessions, roles, and the audit of both.

A caller proves who they are with ``Authorization: Bearer <token>`` (the CLI, the notebook API) or
with the web console's session cookie (opened by signing in with the same token).  Either way the
token must be known, not revoked and not expired (:meth:`coordinator.store.Store.authenticate`);
a session is bound to its token and ends with it.

The cookie is ``HttpOnly`` and ``SameSite=Strict``, and a state-changing call made with it must also
carry the ``X-Radfed-Console`` header, which a cross-site form cannot send (cross-site request
forgery).  Refused sign-ins and calls, and every operator action, go to the coordinator's audit.
"""

from __future__ import annotations

import datetime as dt

from fastapi import HTTPException, Request

from coordinator.store import AuthError, Store

SESSION_COOKIE = "radfed_session"
CSRF_HEADER = "x-radfed-console"
SESSION_LIFETIME = dt.timedelta(hours=12)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Access:
    """FastAPI dependencies over one store: :meth:`caller` (any role) and :meth:`admin`."""

    def __init__(self, store: Store):
        self.store = store

    def identify(self, request: Request) -> dict:
        """The researcher behind ``request``, or :class:`AuthError`."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("malformed Authorization header: pass Authorization: Bearer <token>")
            return self.store.authenticate(token.strip())
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            who = self.store.session_researcher(session)
            if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
                raise AuthError("a console call that changes something must come from the console page itself")
            return who
        raise AuthError("missing bearer token: pass Authorization: Bearer <token> (radfed --token)")

    def caller(self, request: Request) -> dict:
        try:
            return self.identify(request)
        except AuthError as exc:
            self.store.audit("-", "api.auth", "refused", request.url.path, str(exc))
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None

    def admin(self, request: Request) -> dict:
        who = self.caller(request)
        require_admin(self.store, who, request.url.path)
        return who


def require_admin(store: Store, who: dict, what: str) -> None:
    if who["role"] != "admin":
        store.audit(who["name"], "operator.refused", "refused", what, f"role {who['role']!r}")
        raise HTTPException(403, f"{who['name']} has role {who['role']!r}; this needs 'admin'")
