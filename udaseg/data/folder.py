"""A plain folder of images: a user's own unlabelled target camera.

Every *.png / *.jpg / *.jpeg below `root` (recursively) is one sample; its name is the
path relative to `root` with separators replaced, so pseudo-labels keep a one-to-one name.
"""

from __future__ import annotations

from pathlib import Path

from udaseg.data.base import SampleFiles, SegmentationDataset, sorted_files

PATTERNS = ("**/*.png", "**/*.jpg", "**/*.jpeg", "**/*.PNG", "**/*.JPG", "**/*.JPEG")


class ImageFolderDataset(SegmentationDataset):
    def __init__(self, root: str | Path, size=None, fit="stretch"):
        super().__init__(root, None, size, "image", True, False, False, fit)

    def _layout_hint(self) -> str:
        return "expected *.png or *.jpg images anywhere below it"

    def _discover(self) -> list[SampleFiles]:
        return [
            SampleFiles(str(p.relative_to(self.root).with_suffix("")).replace("/", "__"), p)
            for p in sorted_files(self.root, PATTERNS)
        ]
