"""Champion models for the online service: where they come from, and a hot swap that never drops requests.

A *model source* answers two questions: which version of each target is current (cheap, asked every few
seconds) and how to load one. :class:`RegistrySource` follows the MLflow ``@champion`` aliases;
:class:`DirectorySource` serves bundles pinned in a directory (``<dir>/<target>/bundle.json`` as written by
``ModelBundle.save``), which is what a built Bento or an air-gapped host uses.

:class:`ModelManager` keeps one immutable :class:`LoadedModels` and replaces it with a single reference
assignment when a new version loaded, so a request always scores with one consistent set. A version that fails
to load leaves the previous one serving and is reported in :attr:`ModelManager.errors` (and ``/readyz``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from training.bundle import TARGETS, ModelBundle

log = logging.getLogger(__name__)

CHAMPION = "champion"


def bundle_dir(downloaded: Path) -> Path:
    """Where ``bundle.json`` lies in a downloaded registry model (MLflow puts extra files in ``extra_files/``)."""
    downloaded = Path(downloaded)
    for candidate in (downloaded, downloaded / "extra_files"):
        if (candidate / "bundle.json").is_file():
            return candidate
    raise FileNotFoundError(f"no bundle.json in the downloaded model at {downloaded} (nor in its extra_files/)")


class ModelSource(Protocol):
    """Where champion bundles come from."""

    kind: str

    def current_keys(self, targets: tuple[str, ...]) -> dict[str, str | None]:
        """``{target: key}``; the key changes whenever a different model should be served; None = no model."""
        ...

    def load(self, target: str, key: str) -> tuple[ModelBundle, str]:
        """The bundle behind ``key`` and its version label (e.g. the registry version number)."""
        ...

    def missing(self, target: str) -> str:
        """Why ``target`` has no model (for readiness messages)."""
        ...


class RegistrySource:
    """The ``@champion`` alias of each registered model in an MLflow registry (key = version number)."""

    kind = "registry"

    def __init__(self, tracking_uri: str, artifact_root: Path, alias: str = CHAMPION) -> None:
        from training.registry import Registry

        self.registry = Registry(tracking_uri, artifact_root)
        self.alias = alias

    def current_keys(self, targets: tuple[str, ...]) -> dict[str, str | None]:
        return {t: self.registry.version(t, self.alias) for t in targets}

    def load(self, target: str, key: str) -> tuple[ModelBundle, str]:
        with tempfile.TemporaryDirectory(prefix=f"serve-{target}-") as tmp:
            path, version = self.registry.download(target, self.alias, dest=Path(tmp))
            bundle = ModelBundle.load(bundle_dir(path))
        bundle.meta = {**bundle.meta, "version": version}
        return bundle, version

    def missing(self, target: str) -> str:
        return f"no @{self.alias} version of {target} in the registry {self.registry.tracking_uri}"


class DirectorySource:
    """Bundles pinned in ``root/<target>/`` (key = modification times and sizes of the bundle files)."""

    kind = "directory"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _files(self, target: str) -> tuple[Path, Path]:
        d = self.root / target
        return d / "bundle.json", d / "booster.txt"

    def current_keys(self, targets: tuple[str, ...]) -> dict[str, str | None]:
        keys: dict[str, str | None] = {}
        for t in targets:
            try:
                stats = [p.stat() for p in self._files(t)]
            except OSError:
                keys[t] = None
                continue
            keys[t] = ";".join(f"{s.st_mtime_ns}:{s.st_size}" for s in stats)
        return keys

    def load(self, target: str, key: str) -> tuple[ModelBundle, str]:
        bundle = ModelBundle.load(self.root / target)
        version = str(bundle.meta.get("version") or "pinned")
        bundle.meta = {**bundle.meta, "version": version}
        return bundle, version

    def missing(self, target: str) -> str:
        return f"no bundle at {self.root / target} (expected bundle.json and booster.txt)"


@dataclass(frozen=True)
class LoadedModels:
    """One consistent set of champion bundles (read-only; replaced as a whole on reload)."""

    bundles: Mapping[str, ModelBundle] = field(default_factory=lambda: MappingProxyType({}))
    versions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class ModelManager:
    """Loads the champions of ``targets`` from ``source`` and swaps in new versions (see the module docstring).

    ``refresh()`` is blocking (registry calls, downloads): call it from a worker thread. A version that failed
    to load is retried after ``retry_after_s`` seconds, not on every check.
    """

    def __init__(
        self,
        source: ModelSource,
        targets: tuple[str, ...] = TARGETS,
        *,
        retry_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.targets = tuple(targets)
        self.retry_after_s = retry_after_s
        self._clock = clock
        self.current = LoadedModels()
        self.errors: Mapping[str, str] = MappingProxyType({})
        self._failed: dict[tuple[str, str], float] = {}

    def refresh(self) -> bool:
        """Check the source and load what changed; True when a new set was swapped in."""
        errors: dict[str, str] = {}
        try:
            keys = self.source.current_keys(self.targets)
        except Exception as exc:  # noqa: BLE001 - registry down or broken: keep serving
            errors["source"] = f"model {self.source.kind} check failed: {type(exc).__name__}: {exc}"
            self.errors = MappingProxyType({**{k: v for k, v in self.errors.items() if k != "source"}, **errors})
            return False
        cur = self.current
        bundles, versions, loaded_keys = dict(cur.bundles), dict(cur.versions), dict(cur.keys)
        changed = False
        for target in self.targets:
            key = keys.get(target)
            if key is None:
                if target not in bundles:
                    errors[target] = f"model {target} is not available: {self.source.missing(target)}"
                continue
            if key == loaded_keys.get(target):
                continue
            failed_at = self._failed.get((target, key))
            if failed_at is not None and self._clock() - failed_at < self.retry_after_s:
                errors[target] = self.errors.get(target, f"model {target} ({key}) failed to load")
                continue
            try:
                bundle, version = self.source.load(target, key)
                if bundle.target != target:
                    raise ValueError(f"the bundle is for target {bundle.target!r}")
            except Exception as exc:  # noqa: BLE001 - keep the old model, retry later
                self._failed[(target, key)] = self._clock()
                errors[target] = f"model {target} version {key} failed to load: {type(exc).__name__}: {exc}"
                log.warning("%s", errors[target])
                continue
            self._failed.pop((target, key), None)
            bundles[target], versions[target], loaded_keys[target] = bundle, version, key
            changed = True
            log.info("loaded model %s version %s from the %s", target, version, self.source.kind)
        if changed:
            self.current = LoadedModels(
                MappingProxyType(bundles), MappingProxyType(versions), MappingProxyType(loaded_keys)
            )
        self.errors = MappingProxyType(errors)
        return changed

    @property
    def complete(self) -> bool:
        """True when every target has a model loaded."""
        return all(t in self.current.bundles for t in self.targets)
