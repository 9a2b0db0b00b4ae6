"""The keeper's journal: every fault it holds, written to disk before anything is touched."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("shakeout.keeper")

VERSION = 1
Entries = dict[str, dict[str, Any]]


class Journal:
    """A JSON file {"version": 1, "faults": {fault id: entry}}, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Entries:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            faults = data["faults"]
            if not isinstance(faults, dict) or not all(
                isinstance(entry, dict) for entry in faults.values()
            ):
                raise TypeError("faults must map ids to objects")
        except (ValueError, KeyError, TypeError) as error:
            # Writes are atomic, so this is damage from outside; keep it for people.
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("journal %s is unreadable (%s); moved to %s", self.path, error, aside)
            return {}
        return faults

    def save(self, entries: Entries) -> None:
        """Write temp file, fsync, rename, fsync the directory: all of it or nothing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        data = json.dumps({"version": VERSION, "faults": entries}, indent=1, sort_keys=True)
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
