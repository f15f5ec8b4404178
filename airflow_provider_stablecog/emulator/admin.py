"""``/_emulator/...``: the admin surface (credits, ledger, accounts, config, reset).

No API key is needed; by default only loopback clients may use it.
"""

from __future__ import annotations

import json
import random
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from airflow_provider_stablecog.emulator.responses import ApiError
from airflow_provider_stablecog.emulator.state import Account, EmulatorState

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "testclient"})


def admin_state(request: Request) -> EmulatorState:
    """The app's state, for loopback clients only (unless configured otherwise)."""
    state: EmulatorState = request.app.state.emulator
    host = request.client.host if request.client else ""
    if state.config.admin_loopback_only and host not in LOOPBACK_HOSTS and not host.startswith("127."):
        raise ApiError(403, "admin_loopback_only")
    return state


AdminState = Annotated[EmulatorState, Depends(admin_state)]
router = APIRouter(prefix="/_emulator")


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "json_parse_error") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "json_parse_error")
    return body


def _account(state: EmulatorState, api_key: str | None) -> Account:
    if api_key is None:
        return state.default_account
    account = state.accounts_by_key.get(api_key)
    if account is None:
        raise ApiError(404, "unknown_api_key")
    return account


def _account_json(state: EmulatorState, account: Account) -> dict[str, Any]:
    return {
        "account_id": account.account_id,
        "api_keys": list(account.api_keys),
        "balance": account.balance,
        "plan_concurrency": account.plan_concurrency,
        "banned": account.banned,
        "outputs": [
            {"id": o.id, "upscaled": o.upscaled_name is not None, "width": o.width, "height": o.height}
            for o in state.outputs_of(account)
        ],
    }


@router.post("/credits")
async def add_credits(request: Request, state: AdminState) -> dict[str, Any]:
    """``{"amount": N}`` adds N; ``{"balance": N}`` sets the balance; ``api_key`` picks the account."""
    body = await _json_body(request)
    account = _account(state, body.get("api_key"))
    try:
        if "balance" in body:
            account.balance = int(body["balance"])
        account.balance += int(body.get("amount", 0))
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "amount must be an integer") from exc
    return {"api_key": body.get("api_key") or state.config.api_key, "balance": account.balance}


@router.get("/ledger")
async def ledger(state: AdminState) -> dict[str, Any]:
    return state.snapshot()


@router.post("/accounts")
async def add_account(request: Request, state: AdminState) -> dict[str, Any]:
    """``{"api_key", "credits", "plan_concurrency"?, "banned"?, "same_account_as"?}``."""
    body = await _json_body(request)
    api_key = body.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise ApiError(400, "api_key is required")
    try:
        account = state.add_account(
            api_key,
            int(body.get("credits", 0)),
            body.get("plan_concurrency"),
            bool(body.get("banned", False)),
            body.get("same_account_as"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiError(400, f"cannot add account: {exc}") from exc
    return _account_json(state, account)


@router.get("/accounts/{api_key}")
async def get_account(api_key: str, state: AdminState) -> dict[str, Any]:
    return _account_json(state, _account(state, api_key))


@router.patch("/accounts/{api_key}")
async def patch_account(api_key: str, request: Request, state: AdminState) -> dict[str, Any]:
    """Change ``banned``, ``plan_concurrency`` or ``balance`` of an account."""
    account = _account(state, api_key)
    body = await _json_body(request)
    if "banned" in body:
        account.banned = bool(body["banned"])
    if "plan_concurrency" in body:
        account.plan_concurrency = int(body["plan_concurrency"])
        account.pool.wake(account.run_limit)
        account.generation_pool.wake(account.run_limit)
    if "balance" in body:
        account.balance = int(body["balance"])
    return _account_json(state, account)


@router.get("/config")
async def get_config(state: AdminState) -> dict[str, Any]:
    return state.config.public_dict()


@router.patch("/config")
async def patch_config(request: Request, state: AdminState) -> dict[str, Any]:
    """Change any of ``RUNTIME_SETTINGS`` (latency, latency_jitter, the rate limits, faults, ...)."""
    body = await _json_body(request)
    try:
        state.config.update(body)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, str(exc)) from exc
    if "fault_seed" in body:
        state.jitter_rng = random.Random(state.config.fault_seed)
    return state.config.public_dict()


@router.post("/reset")
async def reset(state: AdminState) -> dict[str, Any]:
    state.reset()
    return {"status": "reset", "balance": state.default_account.balance}
