"""Job kinds: what differs between an upscale and a generation, in one small place.

The batch engine (:mod:`airflow_provider_stablecog.batch`) runs both with the same concurrency,
rate limiter, retries, credit floor, write-ahead ledger, downloads and manifest. A job kind says
only:

* how one item is sent (:meth:`JobKind.send`) and what its answer holds (:class:`JobAnswer`);
* what it costs (:meth:`JobKind.cost`: 1 per upscale, ``num_outputs`` per generation);
* which items are free or unusable before anything is sent (:meth:`JobKind.prepare`);
* whether a resend can be charged again (:meth:`JobKind.charges_again`);
* how to find the outputs of a request whose answer was lost (:meth:`JobKind.find_lost`).

Like the engine, it knows nothing of Airflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_stablecog.exceptions import StablecogError
from airflow_provider_stablecog.ledger import GENERATED, UPSCALED

if TYPE_CHECKING:
    from airflow_provider_stablecog.client import StablecogClient
    from airflow_provider_stablecog.ledger import ItemRecord
    from airflow_provider_stablecog.utils.inputs import InputItem
    from airflow_provider_stablecog.utils.prompts import GenerationItem

# Pages of generation outputs read to know which output-ID inputs are free (300 per page).
MAX_OUTPUT_PAGES = 20
#: the server's clock and ours may differ: a lost generation is looked for this much before the intent
CLOCK_SKEW = timedelta(minutes=2)


@dataclass(frozen=True)
class JobAnswer:
    """What one answered request produced: ``outputs`` as (output ID, URL), first = the item's own."""

    outputs: tuple[tuple[str, str | None], ...]
    remaining_credits: int | None
    #: more than one output per item is possible (a generation): the record keeps them all
    multi: bool = False


class JobKind:
    """The upscale: one input, one output, 1 credit; output IDs already upscaled are free."""

    name = "upscale"
    done_status = UPSCALED
    noun = "images"

    def __init__(self, model_id: str | None = None) -> None:
        self.model_id = model_id

    def model_of(self, item: Any) -> str | None:
        return self.model_id

    def cost(self, item: Any) -> int:
        return 1

    def outputs_per_item(self, item: Any) -> int | None:
        """Images written per item at a destination: None is one, named ``<key>.jpg``."""
        return None

    def upload_source(self, item: Any) -> InputItem | None:
        """The local or object-storage file to upload before sending (pre-checked at planning)."""
        return item if item.needs_upload else None

    def stamp(self, item: Any, record: ItemRecord) -> None:
        """Put what the item decides into its record (nothing for an upscale)."""

    def charges_again(self, item: Any) -> bool:
        """A resend may be charged again: not an output ID (the server never charges one twice)."""
        return item.kind != "output_id"

    def prepare(
        self, client: StablecogClient, items: dict[str, Any], log: logging.Logger | Any
    ) -> tuple[set[str], dict[str, tuple[str, str, bool]]]:
        """Before anything is sent: the free keys, and the keys that cannot be sent (code, message,
        and whether the item itself is bad, so that a retry cannot help).

        Output-ID inputs whose output already has an upscaled image are answered at once for
        nothing. The server validates ``upscaled=only`` but does not filter the page by it, so
        every listed output is checked for its ``upscaled_image_url`` here.
        """
        wanted = {item.value.lower(): key for key, item in items.items() if item.kind == "output_id"}
        found: set[str] = set()
        if not wanted:
            return found, {}
        try:
            for output in client.iter_generation_outputs(
                per_page=300, upscaled="only", limit=300 * MAX_OUTPUT_PAGES
            ):
                key = wanted.get(output.id.lower())
                if key is not None and output.is_upscaled:
                    found.add(key)
        except StablecogError as exc:
            log.info(
                "Could not list upscaled outputs (%s); output IDs are counted as 1 credit each", exc.code
            )
        return found, {}

    def send(self, client: StablecogClient, item: Any, uploaded: str | None) -> JobAnswer:
        answer = client.upscale(uploaded or item.value, model_id=self.model_id)
        output = answer.output
        url = output.image_url if isinstance(output.image_url, str) and output.image_url else None
        return JobAnswer(((output.id, url),), answer.remaining_credits)

    def find_lost(
        self, client: StablecogClient, item: Any, record: ItemRecord, log: logging.Logger | Any
    ) -> JobAnswer | None:
        """An upscale's answer is not looked for: an output ID is never charged twice, a URL's
        upscale has no trace to match in the listing."""
        return None


UpscaleJob = JobKind


class GenerateJob(JobKind):
    """The generation: one prompt, ``num_outputs`` images and credits; a lost answer is found again
    in the outputs listing (prompt + seed + size + model, created after the intent)."""

    name = "generate"
    done_status = GENERATED
    noun = "prompts"

    def __init__(self) -> None:
        super().__init__(None)
        #: init images given as output IDs → their image URL (looked up in :meth:`prepare`)
        self._init_urls: dict[str, str] = {}

    def model_of(self, item: GenerationItem) -> str | None:
        return item.model_id

    def cost(self, item: GenerationItem) -> int:
        return item.num_outputs

    def outputs_per_item(self, item: GenerationItem) -> int | None:
        return item.num_outputs

    def upload_source(self, item: GenerationItem) -> InputItem | None:
        return item.init_image if item.needs_upload else None

    def stamp(self, item: GenerationItem, record: ItemRecord) -> None:
        record.seed = item.seed

    def charges_again(self, item: GenerationItem) -> bool:
        return True

    def prepare(
        self, client: StablecogClient, items: dict[str, Any], log: logging.Logger | Any
    ) -> tuple[set[str], dict[str, tuple[str, str, bool]]]:
        """Init images given as output IDs: their image URL, from the outputs listing."""
        wanted: dict[str, list[str]] = {}
        for key, item in items.items():
            if item.init_image is not None and item.init_image.kind == "output_id":
                wanted.setdefault(item.init_image.value.lower(), []).append(key)
        failed: dict[str, tuple[str, str, bool]] = {}
        if not wanted:
            return set(), failed
        try:
            for output in client.iter_generation_outputs(per_page=300, limit=300 * MAX_OUTPUT_PAGES):
                if output.id.lower() in wanted and output.image_url:
                    self._init_urls[output.id.lower()] = output.image_url
        except StablecogError as exc:
            for keys in wanted.values():
                for key in keys:
                    failed[key] = (
                        exc.code,
                        f"{items[key].display}: could not look up the init image's output ID ({exc.code}); retry",
                        False,
                    )
            return set(), failed
        for output_id, keys in wanted.items():
            if output_id not in self._init_urls:
                for key in keys:
                    failed[key] = (
                        "output_not_found",
                        f"{items[key].display}: init_image {output_id} is not one of this account's outputs; "
                        "check the output ID",
                        True,
                    )
        return set(), failed

    def send(self, client: StablecogClient, item: GenerationItem, uploaded: str | None) -> JobAnswer:
        init = uploaded
        if init is None and item.init_image is not None and item.init_image.kind == "output_id":
            init = self._init_urls[item.init_image.value.lower()]
        answer = client.generate(**item.request(init))
        return JobAnswer(tuple((o.id, o.url) for o in answer.outputs), answer.remaining_credits, multi=True)

    def find_lost(
        self, client: StablecogClient, item: GenerationItem, record: ItemRecord, log: logging.Logger | Any
    ) -> JobAnswer | None:
        """The newest generation of this prompt and seed (size, model) created after the intent."""
        if not record.sent_at:
            return None
        try:
            since = datetime.fromisoformat(record.sent_at)
        except ValueError:
            return None
        since = (since if since.tzinfo else since.replace(tzinfo=UTC)) - CLOCK_SKEW
        try:
            groups = client.find_generation_outputs(
                prompt=item.prompt,
                seed=item.seed,
                created_after=since,
                width=item.width,
                height=item.height,
                model_id=item.model_id,
            )
        except StablecogError as exc:
            log.warning("Could not look for %s in the outputs listing (%s)", item.display, exc.code)
            return None
        if not groups:
            return None
        if len(groups) > 1:
            log.warning(
                "%d generations of %s were found after its first request; adopting the newest",
                len(groups),
                item.display,
            )
        outputs = tuple((o.id, o.image_url) for o in groups[0])
        return JobAnswer(outputs, None, multi=True)


__all__ = ["CLOCK_SKEW", "GenerateJob", "JobAnswer", "JobKind", "UpscaleJob"]
