"""MkDocs hook: serve the committed benchmark results (`benchmarks/results/`) in the site, at the same path.

MkDocs builds only what is under `docs/`. This hook adds every file of the folders in `MOUNTS` to the build, with
the path it has in the repository (`benchmarks/results/loss_core_cpu.md` is served at
`benchmarks/results/loss_core_cpu/`), so that the pages link each figure to the committed result it comes from and
`mkdocs build --strict` fails when a cited result is missing. Nothing is copied into `docs/`.
"""

from pathlib import Path

from mkdocs.structure.files import File, Files


MOUNTS = ["benchmarks/results"]


def on_files(files: Files, config) -> Files:
    root = Path(config.config_file_path).parent
    for mount in MOUNTS:
        for path in sorted((root / mount).rglob("*")):
            parts = path.relative_to(root).parts
            # `work/`: a benchmark's git-ignored working folder (models, data: benchmarks/miniature.py), not a result
            if path.is_file() and not any(part.startswith(".") or part == "work" for part in parts):
                files.append(
                    File(
                        path.relative_to(root).as_posix(),
                        src_dir=str(root),
                        dest_dir=config.site_dir,
                        use_directory_urls=config.use_directory_urls,
                    )
                )
    return files
