"""All in-memory state of one emulator: accounts, credit ledger, files, limits."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import random
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_provider_stablecog.emulator.config import EmulatorConfig
from airflow_provider_stablecog.emulator.faults import decide_fault

AURA_SR_MODEL_ID = "9b0ba8d5-3d4c-4b5e-8f60-5ad5f1c1a9a2"
SWIN_IR_MODEL_ID = "14c9c5a4-33a8-4aed-a648-ee8510ae65b2"
UPSCALE_MODELS: tuple[dict[str, Any], ...] = (
    {"id": AURA_SR_MODEL_ID, "name": "AuraSR", "is_default": True},
    {"id": SWIN_IR_MODEL_ID, "name": "SwinIR", "is_default": False},
)
GENERATION_MODEL_ID = "048b4aa3-5586-47ed-900f-f4341c96bdb2"
SCHEDULER_ID = "55027f8b-f046-4e71-bc51-53d5448661e0"
DPM_SCHEDULER_ID = "82cf78dd-6afb-48cc-aca6-14224cca6950"
SDXL_MODEL_ID = "8002bc51-7260-468f-8840-cf1e6dbe3f8a"
SDXL_SCHEDULER_ID = "6fb13b76-9900-4fa4-abf8-8f843e034a7f"
#: active, visible generation models (``GET /v1/image/generation/models``)
GENERATION_MODELS: tuple[dict[str, Any], ...] = (
    {
        "id": GENERATION_MODEL_ID,
        "name": "Stable Diffusion 1.5",
        "is_default": True,
        "available_schedulers": [
            {"id": SCHEDULER_ID, "name": "Euler"},
            {"id": DPM_SCHEDULER_ID, "name": "DPM Multistep"},
        ],
        "default_width": 512,
        "default_height": 512,
    },
    {
        "id": SDXL_MODEL_ID,
        "name": "SDXL",
        "is_default": False,
        "available_schedulers": [{"id": SDXL_SCHEDULER_ID, "name": "Euler Ancestral"}],
        "default_width": 1024,
        "default_height": 1024,
    },
)
SEED_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
PROMPTS = (
    "a lighthouse on a cliff at dawn, oil painting",
    "macro photo of a dew drop on a leaf",
    "isometric city block, pastel colours",
    "portrait of a red fox in the snow",
    "retro-futuristic train station, 35mm film",
    "a bowl of ramen, studio lighting",
)


def stable_uuid(*parts: object) -> str:
    """A version-4-shaped UUID derived only from ``parts`` (deterministic)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def iso(moment: datetime) -> str:
    """``2024-01-01T00:00:00.000Z`` style timestamps, as the server writes them."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class SlotPool:
    """Per-account run slots: ``limit`` run at once, the others wait in FIFO order."""

    def __init__(self) -> None:
        self.running = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def must_wait(self, limit: int) -> bool:
        return self.running >= limit or bool(self.waiters)

    async def acquire(self, limit: int) -> None:
        if not self.must_wait(limit):
            self.running += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            self._abandon(future, limit)
            raise

    def _abandon(self, future: asyncio.Future[None], limit: int) -> None:
        if future in self.waiters:
            self.waiters.remove(future)
        elif future.done() and not future.cancelled():
            self.release(limit)  # the slot was handed over just before cancellation

    def release(self, limit: int) -> None:
        self.running -= 1
        self.wake(limit)

    def wake(self, limit: int) -> None:
        while self.waiters and self.running < limit:
            future = self.waiters.popleft()
            if not future.done():
                self.running += 1
                future.set_result(None)


@dataclass
class Account:
    """A Stablecog user: one balance and one concurrency budget for all its keys."""

    account_id: str
    ordinal: int
    balance: int
    plan_concurrency: int
    banned: bool = False
    initial_credits: int = 0
    api_keys: list[str] = field(default_factory=list)
    output_ids: list[str] = field(default_factory=list)
    pool: SlotPool = field(default_factory=SlotPool)
    #: generation runs on its own counter (the plan's concurrency again), the queue is shared
    generation_pool: SlotPool = field(default_factory=SlotPool)

    @property
    def run_limit(self) -> int:
        """The server lets one more than the plan run at once."""
        return self.plan_concurrency + 1

    @property
    def user_hash(self) -> str:
        return hashlib.sha256(self.account_id.encode()).hexdigest()[:32]


@dataclass
class GeneratedOutput:
    """A generation output owned by an account (seeded at start)."""

    id: str
    account_id: str
    generation_id: str
    width: int
    height: int
    seed: int
    prompt: str
    created_at: datetime
    image_name: str
    upscaled_name: str | None = None
    #: when the generation's credits were taken (the listing's sort key); seeded: ``created_at``
    generation_created_at: datetime | None = None
    negative_prompt: str | None = None
    model_id: str = GENERATION_MODEL_ID
    scheduler_id: str = SCHEDULER_ID
    guidance_scale: float = 7.0
    inference_steps: int = 30
    num_outputs: int = 1
    prompt_strength: float | None = None

    @property
    def sort_time(self) -> datetime:
        return self.generation_created_at or self.created_at


@dataclass
class Upload:
    """An image stored by ``POST /v1/image/upload``."""

    object_key: str
    account_id: str
    path: Path
    size: int


@dataclass
class RateDecision:
    """Outcome of one rate-limit check (values for the X-RateLimit-* headers)."""

    allowed: bool
    limit: float
    remaining: int
    reset: int


class RateLimiter:
    """Sliding one-second window per client IP, shared by all /v1 routes."""

    def __init__(self) -> None:
        self.windows: dict[str, collections.deque[float]] = {}

    def check(self, client: str, limit: float, now: float | None = None) -> RateDecision:
        now = time.monotonic() if now is None else now
        window = self.windows.setdefault(client, collections.deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        allowed = len(window) < limit
        if allowed:
            window.append(now)
        reset_in = (window[0] + 1.0 - now) if window else 0.0
        remaining = max(0, math.floor(limit) - len(window))
        return RateDecision(allowed, limit, remaining, math.ceil(time.time() + reset_in))


@dataclass
class Ledger:
    """Counters reported by ``GET /_emulator/ledger``."""

    charged: int = 0
    refunded: int = 0
    charges_by_input: collections.Counter[str] = field(default_factory=collections.Counter)
    uploads: int = 0
    #: upscale jobs running (each holds one of the account's run slots: never above plan + 1)
    in_flight: int = 0
    max_in_flight: int = 0
    #: upscale requests open at the server, held for a slot or running: what clients keep in flight
    requests_open: int = 0
    max_requests_open: int = 0
    requests_by_route: collections.Counter[str] = field(default_factory=collections.Counter)
    rate_limited: int = 0
    rate_limited_by_class: collections.Counter[str] = field(default_factory=collections.Counter)
    faults_injected: collections.Counter[str] = field(default_factory=collections.Counter)
    responses_lost: int = 0
    abandoned_by_client: int = 0
    broken_inputs: int = 0
    delivered: int = 0
    free_answers: int = 0
    queue_rejected: int = 0
    upscales_completed: int = 0
    generations_completed: int = 0
    outputs_generated: int = 0
    nsfw_rejected: int = 0
    generations_in_flight: int = 0
    max_generations_in_flight: int = 0


class EmulatorState:
    """Everything the running emulator knows; one instance per app."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.data_dir = self._make_data_dir(config.data_dir)
        self.rate_limiter = RateLimiter()
        self._init_memory()

    # -- lifecycle -------------------------------------------------------------------------

    def _make_data_dir(self, configured: str | None) -> Path:
        if configured:
            path = Path(configured)
            path.mkdir(parents=True, exist_ok=True)
            return path
        self._tmp = tempfile.TemporaryDirectory(prefix="stablecog-emulator-")
        self._finalizer = weakref.finalize(self, self._tmp.cleanup)
        return Path(self._tmp.name)

    def _init_memory(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.accounts_by_key: dict[str, Account] = {}
        self.outputs: dict[str, GeneratedOutput] = {}
        self.uploads: dict[str, Upload] = {}
        self.recipes: dict[str, Callable[[Path], None]] = {}
        self.attempts: collections.Counter[str] = collections.Counter()
        self.jitter_rng = random.Random(self.config.fault_seed)
        self.ledger = Ledger()
        self.default_account = self.add_account(
            self.config.api_key, self.config.credits, self.config.plan_concurrency
        )

    def reset(self) -> None:
        """Forget everything and start again from the configuration."""
        self._init_memory()
        self.rate_limiter = RateLimiter()
        shutil.rmtree(self.outputs_dir, ignore_errors=True)
        shutil.rmtree(self.uploads_dir, ignore_errors=True)

    def close(self) -> None:
        """Remove the temporary data directory, if the emulator made one."""
        if self._tmp is not None:
            self._finalizer()

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    # -- accounts --------------------------------------------------------------------------

    def add_account(
        self,
        api_key: str,
        credits: int,
        plan_concurrency: int | None = None,
        banned: bool = False,
        same_account_as: str | None = None,
    ) -> Account:
        """Add an account (or another key of an existing account)."""
        if api_key in self.accounts_by_key:
            raise ValueError("api_key already exists")
        if same_account_as is not None:
            account = self.accounts_by_key[same_account_as]
        else:
            account = self._new_account(credits, plan_concurrency, banned)
        account.api_keys.append(api_key)
        self.accounts_by_key[api_key] = account
        return account

    def _new_account(self, credits: int, plan_concurrency: int | None, banned: bool) -> Account:
        ordinal = len(self.accounts)
        concurrency = self.config.plan_concurrency if plan_concurrency is None else plan_concurrency
        account = Account(
            account_id=stable_uuid("account", self.config.seed, ordinal),
            ordinal=ordinal,
            balance=int(credits),
            plan_concurrency=int(concurrency),
            banned=bool(banned),
            initial_credits=int(credits),
        )
        self.accounts[account.account_id] = account
        self._seed_outputs(account)
        return account

    def account_for(self, authorization: str | None) -> Account | None:
        """The account of ``Authorization: Bearer <key>`` (case-sensitive split)."""
        if not authorization:
            return None
        parts = authorization.split("Bearer ")
        if len(parts) != 2 or parts[0]:
            return None
        return self.accounts_by_key.get(parts[1])

    # -- seeded generation outputs ---------------------------------------------------------

    def _seed_outputs(self, account: Account) -> None:
        for index in range(self.config.seed_outputs):
            self._seed_output(account, index)

    def _seed_output(self, account: Account, index: int) -> None:
        seed = self.config.seed
        upscaled = index % 2 == 1
        width, height = (256, 256) if upscaled else ((512, 512) if index % 4 == 0 else (512, 384))
        image_seed = int(hashlib.sha256(f"{seed}:{account.ordinal}:{index}".encode()).hexdigest()[:8], 16)
        output = GeneratedOutput(
            id=stable_uuid("output", seed, account.ordinal, index),
            account_id=account.account_id,
            generation_id=stable_uuid("generation", seed, account.ordinal, index),
            width=width,
            height=height,
            seed=image_seed,
            prompt=PROMPTS[index % len(PROMPTS)],
            created_at=SEED_EPOCH + timedelta(days=account.ordinal, minutes=index),
            image_name=stable_uuid("image", seed, account.ordinal, index) + ".jpeg",
        )
        self._add_recipe(output.image_name, _generated_recipe(width, height, image_seed))
        if upscaled:
            output.upscaled_name = stable_uuid("upscale", seed, account.ordinal, index) + ".jpeg"
            self._add_recipe(output.upscaled_name, _upscale_recipe(self, output.image_name))
        self.outputs[output.id] = output
        account.output_ids.insert(0, output.id)  # newest first

    def _add_recipe(self, name: str, recipe: Callable[[Path], None]) -> None:
        self.recipes[name] = recipe

    def outputs_of(self, account: Account) -> list[GeneratedOutput]:
        """The account's outputs, newest generation first (as the server sorts its listing)."""
        outputs = [self.outputs[output_id] for output_id in account.output_ids]
        return sorted(outputs, key=lambda o: o.sort_time, reverse=True)

    def add_generated(self, account: Account, output: GeneratedOutput, image_seed: int) -> None:
        """A finished generation's output: listed, served (rendered on first GET), upscalable by ID."""
        self._add_recipe(output.image_name, _generated_recipe(output.width, output.height, image_seed))
        self.outputs[output.id] = output
        account.output_ids.insert(0, output.id)

    # -- stored files ----------------------------------------------------------------------

    def new_output_file(self) -> tuple[str, Path]:
        """A fresh ``<uuid>.jpeg`` name and where to write it."""
        name = f"{uuid.uuid4()}.jpeg"
        return name, self.outputs_dir / name

    def output_path(self, name: str) -> Path | None:
        """Path of a served output, rendering seeded ones on first use."""
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        path = self.outputs_dir / name
        if path.is_file():
            return path
        recipe = self.recipes.get(name)
        if recipe is None:
            return None
        recipe(path)
        return path

    def add_upload(self, account: Account, data: bytes, ext: str) -> Upload:
        name = f"{uuid.uuid4()}.{ext}"
        object_key = f"s3://{account.user_hash}/{name}"
        path = self.uploads_dir / account.user_hash / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        upload = Upload(object_key, account.account_id, path, len(data))
        self.uploads[object_key] = upload
        self.ledger.uploads += 1
        return upload

    # -- credits ---------------------------------------------------------------------------

    def charge(self, account: Account, input_key: str, amount: int = 1) -> int:
        """Take ``amount`` credits; return the balance right after this charge (the answer's remaining_credits)."""
        account.balance -= amount
        self.ledger.charged += amount
        self.ledger.charges_by_input[input_key] += amount
        return account.balance

    def refund(self, account: Account, input_key: str, amount: int = 1) -> None:
        account.balance += amount
        self.ledger.refunded += amount
        self.ledger.charges_by_input[input_key] -= amount

    # -- faults and concurrency ------------------------------------------------------------

    def draw_fault(self, input_key: str) -> str | None:
        """Count this attempt for ``input_key`` and decide its fault (seeded)."""
        self.attempts[input_key] += 1
        attempt = self.attempts[input_key]
        return decide_fault(self.config.faults, self.config.fault_seed, input_key, attempt)

    def answer_jitter(self) -> float:
        """A random extra answer delay in 0..latency_jitter seconds (seeded by fault_seed)."""
        jitter = self.config.latency_jitter
        return self.jitter_rng.uniform(0, jitter) if jitter > 0 else 0.0

    def record_fault(self, kind: str) -> None:
        self.ledger.faults_injected[kind] += 1

    def started_running(self) -> None:
        self.ledger.in_flight += 1
        self.ledger.max_in_flight = max(self.ledger.max_in_flight, self.ledger.in_flight)

    def stopped_running(self) -> None:
        self.ledger.in_flight -= 1

    @contextlib.contextmanager
    def request_open(self) -> Iterator[None]:
        """An upscale request of an authenticated client, from its arrival to its answer."""
        self.ledger.requests_open += 1
        self.ledger.max_requests_open = max(self.ledger.max_requests_open, self.ledger.requests_open)
        try:
            yield
        finally:
            self.ledger.requests_open -= 1

    def generation_started(self) -> None:
        self.ledger.generations_in_flight += 1
        self.ledger.max_generations_in_flight = max(
            self.ledger.max_generations_in_flight, self.ledger.generations_in_flight
        )

    def generation_stopped(self) -> None:
        self.ledger.generations_in_flight -= 1

    def waiting(self, account: Account) -> int:
        """Requests of the account held open for a slot: upscale and generation share this queue."""
        return len(account.pool.waiters) + len(account.generation_pool.waiters)

    # -- reporting -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The ledger as JSON data."""
        ledger = self.ledger
        return {
            "balance": self.default_account.balance,
            "balances": {key: account.balance for key, account in self.accounts_by_key.items()},
            "charged": ledger.charged,
            "refunded": ledger.refunded,
            "net_charged": ledger.charged - ledger.refunded,
            "charges_by_input": {k: v for k, v in ledger.charges_by_input.items() if v},
            "uploads": ledger.uploads,
            "in_flight": ledger.in_flight,
            "waiting": sum(self.waiting(a) for a in self.accounts.values()),
            "max_in_flight": ledger.max_in_flight,
            "requests_open": ledger.requests_open,
            "max_requests_open": ledger.max_requests_open,
            "requests_by_route": dict(ledger.requests_by_route),
            "rate_limited": ledger.rate_limited,
            "rate_limited_by_class": dict(ledger.rate_limited_by_class),
            "faults_injected": dict(ledger.faults_injected),
            "responses_lost": ledger.responses_lost,
            "abandoned_by_client": ledger.abandoned_by_client,
            "broken_inputs": ledger.broken_inputs,
            "delivered": ledger.delivered,
            "free_answers": ledger.free_answers,
            "queue_rejected": ledger.queue_rejected,
            "upscales_completed": ledger.upscales_completed,
            "generations_completed": ledger.generations_completed,
            "outputs_generated": ledger.outputs_generated,
            "nsfw_rejected": ledger.nsfw_rejected,
            "generations_in_flight": ledger.generations_in_flight,
            "max_generations_in_flight": ledger.max_generations_in_flight,
            "attempts_by_input": dict(self.attempts),
        }


def _generated_recipe(width: int, height: int, seed: int) -> Callable[[Path], None]:
    def render(path: Path) -> None:
        from airflow_provider_stablecog.emulator.imaging import write_generated_output

        write_generated_output(path, width, height, seed)

    return render


def _upscale_recipe(state: EmulatorState, source_name: str) -> Callable[[Path], None]:
    def render(path: Path) -> None:
        from airflow_provider_stablecog.emulator.imaging import upscale_to_file

        source = state.output_path(source_name)
        assert source is not None
        upscale_to_file(source, path)

    return render
