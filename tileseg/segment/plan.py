"""Planning on the driver, from headers only: survey the images (no side effects), then the store, then
per image its group and its blocks.

A bad file fails alone, here, before any work is queued. The plan's work items carry a block's
geometry only; the tiling they were planned with travels separately, once (`Resolved.tiling`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np

from tileseg import contract, raster, stac, store
from tileseg.artifact import ModelMeta
from tileseg.errors import RasterError, StoreError
from tileseg.grid import Block
from tileseg.resample import ResampledBlock
from tileseg.segment.options import Resolved
from tileseg.segment.work import WorkItem
from tileseg.uri import absolute, is_uri, redact


@dataclass(frozen=True)
class ImagePlan:
    """One discovered image: its group and blocks (those still to do), or why it cannot be segmented."""

    path: str
    group: str | None = None
    blocks: int = 0
    todo: tuple[Block, ...] = ()
    resumed: int = 0
    warning: str | None = None
    error: str | None = None
    block_bytes: int = 0  # what its largest block weighs in the object store (pixels in, results out)
    scale: float = 1.0  # image pixels per model pixel (`--resample`)
    image_shape: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class JobPlan:
    """Every image's plan (in input order), the inputs skipped as not images, and the work items."""

    images: tuple[ImagePlan, ...]
    skipped: tuple[tuple[str, str], ...]
    items: tuple[WorkItem, ...]

    @property
    def block_bytes(self) -> int:
        """The heaviest block of the run, in bytes: what bounds how far reading may run ahead."""
        return max((p.block_bytes for p in self.images if p.todo), default=0)

    @property
    def tiles(self) -> int:
        return sum(item.block.tile_count for item in self.items)


def range_warning(dtype: str, meta: ModelMeta) -> str | None:
    """Why an image's pixel type looks unlike the model's training data, or None.

    Judged from the header alone: the model's normalisation says whether it was trained on 8-bit data
    (every band's mean + 3 std under 1.5 x 255), and an integer type says whether the image is 8-bit. A
    uint16 scene given to an 8-bit model (or the reverse) runs, but its predictions mean little.
    """
    kind = np.dtype(dtype)
    if kind.kind not in "iu":
        return None  # floats can hold anything: nothing to tell from the header
    model_8bit = meta.trained_on_8bit
    if model_8bit and kind == np.int8:
        return "signed 8-bit pixels (-128..127), but the model was trained on unsigned 8-bit data; rescale to 0-255"
    if model_8bit == (kind.itemsize == 1):
        return None
    norm = ", ".join(f"{m:.0f}" for m in meta.mean)
    if model_8bit:
        return (
            f"{kind.name} pixels, but the model was trained on 8-bit data (band means {norm}); unless its "
            "values are 0-255, rescale the image or train a model on such data"
        )
    return f"8-bit pixels, but the model was trained on wider data (band means {norm}); predictions may mean little"


@dataclass(frozen=True)
class Surveyed:
    """One discovered image as read from its header, before the store is touched: its blocks, or its error."""

    path: str
    info: raster.ImageInfo | None = None
    name: str | None = None
    blocks: tuple[Block, ...] = ()
    scale: float = 1.0  # image pixels per model pixel (`--resample`)
    stac: dict | None = None  # the STAC item it came from (item id, datetime, asset href, self link)
    warning: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Survey:
    """Every discovered image's header checks (in input order) and the inputs skipped as not images."""

    images: tuple[Surveyed, ...]
    skipped: tuple[tuple[str, str], ...]

    def why_nothing(self) -> str | None:
        """Why no image can be segmented (None when at least one can)."""
        if any(s.error is None for s in self.images):
            return None
        if self.images:
            return f"no input could be planned ({self.images[0].error})"
        reasons = "; ".join(f"{p}: {why}" for p, why in self.skipped[:3])
        return "no image found among the inputs" + (f" ({reasons})" if reasons else "")


def survey(job: Resolved) -> Survey:
    """Discover the inputs and check every image from its header (group name, blocks); no side effects.

    Rasters (files, directories, globs, URLs, prefixes) come first, in the order given, then the images of
    STAC documents (one per item, its group named after the item id); an unusable item fails alone. With
    --fail-fast the survey stops at the first image that fails.
    """
    rasters, documents = stac.split_inputs(job.options.inputs)
    found, skipped = raster.discover(rasters) if rasters else ([], [])
    paths = [absolute(p) for p in found]  # workers (and the store's records) need paths that work anywhere
    naming = list(paths)  # what each group is named after: the file's stem, or the STAC item's id
    records: dict[int, dict] = {}
    unusable: list[tuple[str, Exception]] = []
    for doc in documents:
        try:
            items, errors = stac.expand(absolute(doc), job.options.asset)
        except RasterError as exc:
            unusable.append((redact(doc), exc))
            continue
        unusable.extend(errors)
        for item in items:
            records[len(paths)] = item.record()
            paths.append(item.href)
            naming.append(item.item_id.replace("/", "_").replace("\\", "_"))
    infos = raster.open_infos(paths)  # headers in a thread pool: they wait on storage, not on the CPU
    # Names follow the inputs' order, in one linear pass, so a resumed run maps paths to the same groups.
    opened = [i for i, info in enumerate(infos) if isinstance(info, raster.ImageInfo)]
    names = dict(zip(opened, store.group_names([naming[i] for i in opened]), strict=True))
    images: list[Surveyed] = []
    for i, (path, info) in enumerate(zip(paths, infos, strict=True)):
        images.append(survey_image(job, path, info, names.get(i), records.get(i)))
        if images[-1].error and job.options.fail_fast:
            return Survey(tuple(images), tuple(skipped))
    images.extend(Surveyed(path=label, error=str(exc)) for label, exc in unusable)
    return Survey(tuple(images), tuple(skipped))


def survey_image(
    job: Resolved, path: str, info: raster.ImageInfo | Exception, name: str | None, stac_record: dict | None = None
) -> Surveyed:
    """One image's header checks and blocks; any failure becomes its error."""
    o = job.options
    warning = None
    try:
        if isinstance(info, Exception):
            raise info
        if np.dtype(info.dtype).kind == "c":
            raise RasterError(f"{path}: complex pixels ({info.dtype}) are not supported; convert to real values")
        raster.check_bands(info, job.bands)
        scale, gsd_warning = job.scale_for(info)
        warnings = [w for w in (range_warning(info.dtype, job.meta), gsd_warning) if w]
        warning = "; ".join(warnings) or None
        if o.progress:
            for w in warnings:
                print(f"warning: {path}: {w}", file=sys.stderr)
        blocks = job.tiling.plan(info.height, info.width, block=o.block, chunk=o.chunk)
        if scale != 1.0:  # the model's grid: each block reads what its resampled tiles need
            blocks = [_on_model_grid(b, info, scale, job) for b in blocks]
    except (RasterError, ValueError) as exc:
        return Surveyed(path=path, warning=warning, error=redact(str(exc)))
    except Exception as exc:  # noqa: BLE001 - whatever one image does, the others are still planned
        return Surveyed(path=path, warning=warning, error=redact(f"{path}: {type(exc).__name__}: {exc}"))
    return Surveyed(
        path=path, info=info, name=name, blocks=tuple(blocks), scale=scale, stac=stac_record, warning=warning
    )


def prepare_store(job: Resolved, found: Survey) -> None:
    """Replace the store when asked (`--overwrite`), then create it (or open it to resume).

    Called once planning has succeeded: an --overwrite with nothing to segment leaves the old store as it was.
    """
    o = job.options
    why = found.why_nothing()
    if why and o.overwrite and not o.resume:
        raise StoreError(f"{redact(job.out)}: {redact(why)}; --overwrite left the store as it was")
    try:
        if o.overwrite and not o.resume and contract.is_tileseg_store(job.out):
            contract.clear_store(job.out)  # checked in resolve(): a tileseg store holding no input; our lock stays
        attrs = {"settings": job.settings(), "model": job.model_identity()}
        store.create_store(job.out, attrs, zarr_format=None if o.resume else o.zarr_format)
    except OSError as exc:  # a file in the way, no permission
        raise StoreError(f"cannot write {redact(job.out)}: {redact(str(exc))}") from None


def plan_job(job: Resolved, found: Survey) -> JobPlan:
    """Every surveyed image's group (created in the store) and work items; with --fail-fast stop at the
    first failure."""
    plans: list[ImagePlan] = []
    items: list[WorkItem] = []
    for surveyed in found.images:
        plan = plan_image(job, surveyed)
        plans.append(plan)
        if plan.error and job.options.fail_fast:
            break
        index = len(plans) - 1
        items.extend(
            WorkItem(
                image=index, path=plan.path, group=plan.group, block=b, scale=plan.scale, image_shape=plan.image_shape
            )
            for b in plan.todo
        )
    return JobPlan(tuple(plans), found.skipped, tuple(items))


def plan_image(job: Resolved, surveyed: Surveyed) -> ImagePlan:
    """One image's group (created in the store) and its blocks not yet done; any failure becomes its error."""
    o = job.options
    path, info, name, blocks, warning = surveyed.path, surveyed.info, surveyed.name, surveyed.blocks, surveyed.warning
    if surveyed.error or info is None:
        return ImagePlan(path=path, warning=warning, error=surveyed.error or f"{path}: not planned")
    scale = surveyed.scale
    try:
        recorded = replace(info, path=redact(info.path)) if is_uri(path) else info  # no credential in the store
        store.create_image_group(
            job.out,
            name,
            recorded,
            classes=job.meta.classes,
            chunk=o.chunk,
            num_blocks=len(blocks),
            probabilities=o.probabilities,
            probability_dtype=o.probability_dtype,
            uncertainty=job.uncertainty_measure,
            attrs={
                "settings": job.settings(),
                "model": job.model_identity(),
                "scale": scale,
                **({"stac": surveyed.stac} if surveyed.stac else {}),
            },
            plan=job.image_plan(recorded, blocks, scale),
        )
    except (RasterError, StoreError, ValueError) as exc:
        return ImagePlan(path=path, warning=warning, error=redact(str(exc)))
    except Exception as exc:  # noqa: BLE001 - whatever one image does, the others are still planned
        return ImagePlan(path=path, warning=warning, error=redact(f"{path}: {type(exc).__name__}: {exc}"))
    done = store.done_blocks(job.out, name) if o.resume else set()
    # A block's pixels and valid mask in, its mask (and float32 probabilities) out.
    pixel_bytes = len(job.bands) * np.dtype(info.dtype).itemsize + 1
    out_bytes = 1 + (4 * job.meta.num_classes if o.probabilities else 0) + int(o.uncertainty)
    todo = tuple(b for b in blocks if b.index not in done)
    weights = (b.read.height * b.read.width * pixel_bytes + b.region.height * b.region.width * out_bytes for b in todo)
    return ImagePlan(
        path=path,
        group=name,
        scale=scale,
        image_shape=(info.height, info.width),
        blocks=len(blocks),
        todo=todo,
        resumed=len(done),
        warning=warning,
        block_bytes=max(weights, default=0),
    )


def _on_model_grid(block: Block, info: raster.ImageInfo, scale: float, job: Resolved) -> Block:
    """`block` with the image window and the model-grid tiles that resampling at `scale` needs."""
    t = job.tiling
    rb = ResampledBlock.plan(block.index, block.region, info.height, info.width, scale, t.tile, t.overlap)
    return Block(block.index, block.region, rb.read, rb.grid.tile_rows, rb.grid.tile_cols)
