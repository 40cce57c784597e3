"""HTTP routes for signing in and for the account's devices (the logic is in auth.py).

- `POST /auth/login` signs a browser in (a session cookie); `POST /auth/logout` ends it;
  `GET /auth/session` tells the page who it is and the CSRF header value to send.
- `POST /auth/token` trades a user name and password for a new device token (a script on
  a machine that has no token yet).
- `GET /devices` lists the account's device tokens and browser sessions, with when each
  was last seen; `POST /devices` makes a token for a new device (shown once);
  `DELETE /devices/{id}` revokes one, and that device is refused (401 token_revoked)
  from then on. The page's Devices view and `cloudfs devices` (devices_cli.py) use them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from cloudfs.backend.protocol import wire
from cloudfs.backend.protocol.names import DEVICE_RE, DEVICE_RULE

from . import auth
from .api import ERRORS
from .app import ServerContext, User, context_dependency, current_user
from .errors import Invalid, Unauthorized
from .users import USER_NAME_RE, hash_token

router = APIRouter(responses={**ERRORS, 429: {"model": wire.ErrorBody, "description": "too many failed attempts: "
                                                                                     "wait Retry-After seconds"}},
                   tags=["auth"])
Ctx = Annotated[ServerContext, Depends(context_dependency)]
Auth = Annotated[User, Depends(current_user)]


class Credentials(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=USER_NAME_RE.pattern,
                               description="an account name (`cloudfs user add`)")]
    password: Annotated[str, Field(min_length=1, max_length=auth.PASSWORD_MAX)]


class TokenRequest(Credentials):
    device: Annotated[str, Field(min_length=1, max_length=64, description="the new device's name")]


class Session(BaseModel):
    name: str
    user_id: int
    root_id: int
    csrf: str = Field(description=f"send as {auth.CSRF_HEADER} with every change")


class NewToken(BaseModel):
    id: str
    token: str = Field(description="shown once: give it to `cloudfs mount --token`")


class Device(BaseModel):
    id: str
    kind: str = Field(description="'device' (a bearer token) or 'session' (a browser's sign-in)")
    label: str | None
    created_at: float
    last_seen_at: float | None
    last_device: str | None
    expires_at: float | None
    current: bool = Field(description="the session making this request")


class DeviceList(BaseModel):
    devices: list[Device]


class NewDevice(BaseModel):
    label: Annotated[str, Field(min_length=1, max_length=64)]


class PasswordChange(BaseModel):
    current: Annotated[str, Field(min_length=1, max_length=auth.PASSWORD_MAX)]
    new: Annotated[str, Field(min_length=1, max_length=auth.PASSWORD_MAX)]


def browser_label(agent: str) -> str:
    """'Firefox on Linux': how the devices page names a browser's session."""
    browser = next((name for mark, name in (("Firefox/", "Firefox"), ("Edg/", "Edge"), ("Chrome/", "Chromium"),
                                            ("Safari/", "Safari")) if mark in agent), "a browser")
    system = next((name for mark, name in (("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iOS"),
                                           ("Windows", "Windows"), ("Mac OS", "macOS"), ("Linux", "Linux"))
                   if mark in agent), None)
    return f"{browser} on {system}" if system else browser


async def _check_credentials(ctx: ServerContext, request: Request, name: str, password: str) -> dict:
    """The account, if the password is right; slowed per account and address (auth.py)."""
    address = request.client.host if request.client else "-"
    found: dict = {}

    async def attempt() -> bool:
        def load() -> dict | None:
            with ctx.db.read() as conn:
                row = auth.account(conn, name)
            return dict(row) if row is not None else None
        row = await ctx.run_db(load)
        ok = await auth.check_password(row["password_hash"] if row else None, password)
        if ok and row is not None:
            found.update(row)
        return ok

    if not await auth.guarded(ctx, auth.throttle_keys(name.lower(), address), attempt):
        raise auth.no_account()
    return found


@router.post("/auth/login")
async def login(ctx: Ctx, request: Request, response: Response, req: Credentials) -> Session:
    row = await _check_credentials(ctx, request, req.name, req.password)
    label = browser_label(request.headers.get("user-agent", ""))
    token = await ctx.run_db(auth.new_token, ctx.db, row["id"], kind="session", label=label, days=auth.SESSION_DAYS)
    response.set_cookie(auth.SESSION_COOKIE, token, max_age=auth.SESSION_DAYS * 86400, path="/", httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    return Session(name=row["name"], user_id=row["id"], root_id=row["root_id"], csrf=auth.csrf_for(token))


@router.post("/auth/logout")
async def logout(ctx: Ctx, request: Request, response: Response, user: Auth) -> dict[str, bool]:
    """Ends this browser's session (the cookie and the token behind it)."""
    session = request.cookies.get(auth.SESSION_COOKIE)
    if session:
        await ctx.run_db(auth.revoke_token, ctx.db, session)
        ctx.forget_tokens()
    response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
    return {"signed_out": True}


@router.get("/auth/session")
async def session(request: Request, user: Auth) -> Session:
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if cookie is None or request.headers.get("authorization"):
        raise Unauthorized("no browser session: sign in with POST /auth/login", field="cookie")
    return Session(name=user.name, user_id=user.id, root_id=user.root_id, csrf=auth.csrf_for(cookie))


@router.post("/auth/token", status_code=201)
async def device_token(ctx: Ctx, request: Request, req: TokenRequest) -> NewToken:
    """A new device token for a user name and password (`cloudfs login`)."""
    if not DEVICE_RE.match(req.device):
        raise Invalid(f"device name: {DEVICE_RULE}", field="device")
    row = await _check_credentials(ctx, request, req.name, req.password)
    token = await ctx.run_db(auth.new_token, ctx.db, row["id"], kind="device", label=req.device)
    return NewToken(id=auth.public_id(hash_token(token)), token=token)


@router.post("/auth/password")
async def change_password(ctx: Ctx, request: Request, user: Auth, req: PasswordChange) -> dict[str, bool]:
    """Change the account's password (the current one is asked again); every browser
    session ends, this one included."""
    await _check_credentials(ctx, request, user.name, req.current)
    try:
        await ctx.run_db(auth.set_password, ctx.db, user.name, req.new)
    except ValueError as exc:
        raise Invalid(str(exc), field="new") from None
    ctx.forget_tokens()
    return {"changed": True}


@router.get("/devices")
async def devices(ctx: Ctx, request: Request, user: Auth) -> DeviceList:
    """The account's device tokens and browser sessions; `current` is the one asking
    (a browser's session, or the bearer token of a device's `cloudfs devices`)."""
    rows = await ctx.run_db(auth.list_tokens, ctx.db, user.id)
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    asking = bearer.strip() if scheme.lower() == "bearer" else request.cookies.get(auth.SESSION_COOKIE)
    mine = hash_token(asking) if asking else None
    return DeviceList(devices=[Device(**{k: v for k, v in r.items() if k != "_hash"}, current=r["_hash"] == mine)
                               for r in rows])


@router.post("/devices", status_code=201)
async def add_device(ctx: Ctx, user: Auth, req: NewDevice) -> NewToken:
    if not DEVICE_RE.match(req.label):
        raise Invalid(f"device name: {DEVICE_RULE}", field="label")
    token = await ctx.run_db(auth.new_token, ctx.db, user.id, kind="device", label=req.label)
    return NewToken(id=auth.public_id(hash_token(token)), token=token)


@router.delete("/devices/{token_id}")
async def revoke_device(ctx: Ctx, user: Auth, token_id: str) -> dict[str, int]:
    """Revoke a device's token or a browser's session: it gets 401 token_revoked from now on."""
    revoked = await ctx.run_db(auth.revoke, ctx.db, user.id, token_id)
    ctx.forget_tokens()
    return {"revoked": revoked}
