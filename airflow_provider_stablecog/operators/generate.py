"""StablecogGenerateOperator: prompts → images, on the same engine and ledger as the upscale.

Example::

    from airflow_provider_stablecog.operators.generate import StablecogGenerateOperator
    from airflow_provider_stablecog.operators.upscale import UpscaleOperator

    generate = StablecogGenerateOperator(
        task_id="generate",
        prompts=["a lighthouse at dawn", {"prompt": "a red fox", "num_outputs": 1, "seed": 7}],
        width=512,
        height=512,
        num_outputs=2,
        destination="s3://my-bucket/generated/{{ run_id }}/",
    )
    # the output IDs feed the upscale directly (1 credit each, then free)
    UpscaleOperator(task_id="upscale", inputs=generate.output_ids, destination="s3://my-bucket/upscaled/")

Each prompt is validated against the API's limits before anything is spent
(:mod:`airflow_provider_stablecog.utils.prompts`), gets a seed derived from the item when it has
none, and runs through :class:`~airflow_provider_stablecog.batch.UpscaleBatch` with the generation
job kind (:class:`~airflow_provider_stablecog.jobs.GenerateJob`): concurrency within the plan, the
shared rate limiter, retries by error class, the write-ahead credit ledger, the reserve floor
(``num_outputs`` credits per prompt), downloads and a manifest. A lost answer, or a request in
flight when a try died, is looked for in the outputs listing (prompt + seed, created after the
request was recorded) before it is paid again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_stablecog.operators.base import (
    StablecogBatchOperator,
    validate_static,
)

if TYPE_CHECKING:
    from airflow.sdk.definitions.xcom_arg import XComArg

    from airflow_provider_stablecog.batch import BatchReport
    from airflow_provider_stablecog.utils.prompts import PromptPlan

#: the XCom key of the flat list of output IDs (the input of an UpscaleOperator)
OUTPUT_IDS_KEY = "output_ids"


class StablecogGenerateOperator(StablecogBatchOperator):
    """Generate images from prompts with Stablecog (``num_outputs`` credits per prompt).

    :param prompts: a list (or one) of prompt strings, or of dicts with a ``prompt`` and per-item
        parameters (the names below) that override the operator's. Templated; usually an XComArg.
        Identical items (same settings and seed) are generated once.
    :param negative_prompt: default negative prompt. Templated.
    :param model_id: default generation model UUID (checked against
        ``/v1/image/generation/models``); default: the server's default model. Templated.
    :param width: default width, 256–1536 (default: the model's).
    :param height: default height, 256–1536 (default: the model's).
    :param num_outputs: images per prompt, 1–4 (default: the server's, 2); the price of a prompt.
        Templated (render it as a native int: ``render_template_as_native_obj=True``).
    :param guidance_scale: 1–30 (default: the server's).
    :param scheduler_id: a scheduler of the model (default: the model's).
    :param seed: default seed, 0…2³¹−2; without one each item gets a seed derived from the item,
        so a retry asks for the same images and a lost answer can be recognised.
    :param init_image: image-to-image: an http(s) URL, an output ID of yours, an ``s3://`` upload
        key, or a local / object-storage file (uploaded first). Templated.
    :param prompt_strength: 0–1, with an init image (default: the server's, 0.5).
    :param destination: where to write the images (``<key>-<n>.jpg``) and ``manifest.jsonl``: a
        local path or any ObjectStoragePath URL. Templated. Without it nothing is downloaded.
    :param stablecog_conn_id: the Stablecog connection.
    :param max_concurrency: generations in flight; default: the connection's plan concurrency + 1
        (generation has its own counter at the server, separate from upscales).
    :param rate_limit: requests/s for this task; default: the connection's ``rate_limit`` extra.
    :param credit_reserve: never start a generation that could take the balance below this.
    :param max_credits: a budget: the most this task may spend **across all its tries** (retries
        and clears of the same task instance). What earlier tries spent is read from the ledger
        (the destination, or the state store without one), so a retry cannot reset it; requests
        that may have been charged without an answer count as spent. Items past the budget are left
        ``not_started`` (code ``max_credits``) and the task fails without retrying; the summary
        shows budget, spent and left. ``None`` (default): no budget. Templated (e.g. the credits
        a human approved: ``"{{ ti.xcom_pull(task_ids='price')['credits_needed'] }}"``).
    :param max_failed_ratio: the share of prompts that may fail (e.g. refused by moderation,
        ``nsfw_prompt``) before the task fails, after every prompt was tried and the manifest saved.
    :param fail_on_not_started: fail the task when prompts could not be started (no credits,
        reserve reached, a fatal error). Default True.
    :param dry_run: send no generation; log and return the plan and the credits it needs.
    :param resend_possibly_charged: a prompt whose request may have been charged without an answer,
        and whose outputs are not in the outputs listing, is sent again (default; reported as
        possibly double-charged) or left for you (``False``).
    :param progress_interval: seconds between progress lines in the task log.
    :param emit_asset: add a literal ``destination`` as an outlet Asset.

    XCom: the return value has one record per prompt, in order (``input`` = the prompt, ``status``
    ``generated`` | ``skipped`` | ``failed`` | ``not_started``, ``output_ids``, ``urls``,
    ``paths``, ``seed``, ``adopted`` when a lost answer was found in the listing); the key
    ``output_ids`` holds every output ID as one flat list (:attr:`output_ids`), the key ``summary``
    the spend report.
    """

    template_fields: Sequence[str] = (
        "prompts",
        "destination",
        "negative_prompt",
        "model_id",
        "init_image",
        "num_outputs",
        "max_credits",
    )
    template_fields_renderers = {"prompts": "json"}  # noqa: RUF012 -- Airflow reads it from the class
    ui_color = "#f0d8c8"
    unit = "prompts"
    asset_name_prefix = "stablecog-generated"

    def __init__(
        self,
        *,
        prompts: Any,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        num_outputs: int | None = None,
        guidance_scale: float | None = None,
        scheduler_id: str | None = None,
        seed: int | None = None,
        init_image: Any = None,
        prompt_strength: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompts = prompts
        self.negative_prompt = negative_prompt
        self.width = width
        self.height = height
        self.num_outputs = num_outputs
        self.guidance_scale = guidance_scale
        self.scheduler_id = scheduler_id
        self.seed = seed
        self.init_image = init_image
        self.prompt_strength = prompt_strength
        validate_static(self)

    @property
    def output_ids(self) -> XComArg:
        """The flat list of every generated output ID, as an XComArg (``UpscaleOperator(inputs=...)``)."""
        from airflow.sdk.definitions.xcom_arg import XComArg

        return XComArg(self, key=OUTPUT_IDS_KEY)

    def defaults(self) -> dict[str, Any]:
        """The operator-level parameters every item starts from (unset ones left out)."""
        values = {
            "negative_prompt": self.negative_prompt,
            "model_id": self.model_id,
            "width": self.width,
            "height": self.height,
            "num_outputs": self.num_outputs,
            "guidance_scale": self.guidance_scale,
            "scheduler_id": self.scheduler_id,
            "seed": self.seed,
            "init_image": self.init_image,
            "prompt_strength": self.prompt_strength,
        }
        return {k: v for k, v in values.items() if v is not None and v != ""}

    # -- execute -----------------------------------------------------------------------------------

    def _plan_items(self) -> PromptPlan:
        return self.plan_prompts()

    def _batch_label(self, plan: PromptPlan) -> str:
        n = len(plan.positions)
        if not n:
            return "0 prompts"
        first, last = plan.display_for(0)[:40], plan.display_for(n - 1)[:40]
        return f"{n} prompts: {first}" + (f" … {last}" if n > 1 else "")

    def _job_kind(self) -> Any:
        from airflow_provider_stablecog.jobs import GenerateJob

        return GenerateJob()

    def _dry_run_head(self, plan: PromptPlan, todo: Any) -> dict[str, Any]:
        return {
            "prompts": len(plan.positions),
            "unique": len(plan.unique),
            "to_generate": len(todo.to_upscale),
        }

    def _log_start(self, plan: PromptPlan, todo: Any, credits: int | None, concurrency: int) -> None:
        self.log.info(
            "Generating %d unique prompts (%d given, %d already done, %d to download again, %d invalid, "
            "%d in flight when an earlier try ended) with %d in flight; %s",
            len(todo.to_upscale),
            len(plan.positions),
            len(todo.skipped),
            len(todo.to_download),
            len(plan.invalid) + len(todo.preflight_failed),
            len(todo.in_flight_at_crash),
            concurrency,
            self._credits_line(credits, todo),
        )

    def _push_xcoms(self, ti: Any, plan: PromptPlan, report: BatchReport) -> None:
        ti.xcom_push(key=OUTPUT_IDS_KEY, value=_output_ids(plan, report))

    def plan_prompts(self) -> PromptPlan:
        """The rendered prompts, validated against the API's limits (reads the models and defaults,
        which need no key and cost nothing)."""
        from airflow_provider_stablecog.utils.prompts import coerce_prompt_list, plan_prompts

        prompts = coerce_prompt_list(self.prompts)
        models = self.hook.list_generation_models()
        server_defaults = self.hook.get_generation_defaults()
        return plan_prompts(prompts, self.defaults(), models, server_defaults)


def _output_ids(plan: PromptPlan, report: BatchReport) -> list[str]:
    """Every output ID of the prompts that have outputs, in prompt order, each once."""
    seen: dict[str, None] = {}
    for entry in plan.positions:
        if isinstance(entry, str):
            record = report.result_for(entry)
            if record.paid:
                for output_id in record.output_ids or [record.output_id or ""]:
                    if output_id:
                        seen.setdefault(output_id, None)
    return list(seen)


__all__ = ["OUTPUT_IDS_KEY", "StablecogGenerateOperator"]
