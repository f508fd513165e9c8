"""The Docker images and the files that name them (static checks: no docker daemon needed).

- every COPY/ADD source of each Dockerfile exists and gets through its build-context ignore
  file, and what the image's set-up and CMD read is copied;
- every image a cluster file (launch/clusters, launch/kuberay) names is one the README builds
  and pushes, GPU clusters run the CUDA image, and the README's table says which file uses
  which image;
- the CUDA Dockerfile installs the CUDA torch and fbgemm-gpu, the CPU one the CPU builds.

Each check returns the problems it finds, so the tests below also show them failing on
broken copies.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dist_train.config.load import DEFAULT_CONFIG
from dist_train.launchers.cluster_files import launcher_limits, rayjob_nodes

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
README = REPO / "README.md"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
CLUSTER_FILES = sorted([*REPO.glob("launch/clusters/*.yaml"), *REPO.glob("launch/kuberay/*.yaml")])
# Python versions with Linux x86_64 wheels of torch 2.13.0, fbgemm-gpu(-cpu) 1.8.0 and
# torchrec 1.8.0 on PyPI (cp310 ... cp314).
WHEEL_PYTHONS = {(3, 10), (3, 11), (3, 12), (3, 13), (3, 14)}
# python3 of the Ubuntu releases nvidia/cuda images are built on.
UBUNTU_PYTHON = {"22.04": (3, 10), "24.04": (3, 12)}


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# --- Dockerfile parsing --------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined, comments dropped
    line: int


_HEREDOC = re.compile(r"(?:^|\s)<<-?[\"']?([A-Za-z_]\w*)[\"']?")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined (the escape directive honoured), comment
    and blank lines dropped and here-document bodies skipped."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives come first, before any other line
        m = re.fullmatch(r"#\s*(\w+)\s*=\s*(\S+)\s*", line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines, also inside a continued instruction
        if not parts:
            start = i
        if stripped.endswith(escape):
            parts.append(stripped[: -len(escape)].strip())
            continue
        parts.append(stripped)
        keyword, args = _keyword(" ".join(parts))
        parts = []
        out.append(Instruction(keyword, args, start))
        for tag in _HEREDOC.findall(args) if keyword in ("RUN", "COPY", "ADD") else []:
            while i < len(lines) and lines[i].strip() != tag:
                i += 1
            i += 1  # past the terminator
    if parts:
        out.append(Instruction(*_keyword(" ".join(parts)), start))
    return out


def _keyword(instruction: str) -> tuple[str, str]:
    keyword, *args = instruction.split(maxsplit=1)
    return keyword.upper(), args[0].strip() if args else ""


def _split_flags(args: str) -> tuple[list[str], str]:
    flags = []
    rest = args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest


def _expand(value: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, value)


@dataclass(frozen=True)
class Copy:
    sources: list[str]  # as written (variables expanded)
    dest: str  # absolute path in the image
    line: int


def copies(instructions: list[Instruction]) -> list[Copy]:
    """COPY/ADD from the build context (``--from`` stages and images, here-documents and
    ADD's URLs skipped), with destinations made absolute against WORKDIR."""
    variables: dict[str, str] = {}
    workdir = "/"
    out = []
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:  # an ARG without default stays unset
            name, _, default = ins.args.partition("=")
            variables.setdefault(name.strip(), default.strip().strip("\"'"))
        elif ins.keyword == "ENV":
            variables.update(env_vars(ins.args))
        elif ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, _expand(ins.args, variables))
        elif ins.keyword in ("COPY", "ADD"):
            flags, rest = _split_flags(ins.args)
            if any(f.startswith("--from") for f in flags):
                continue
            items = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            items = [_expand(item, variables) for item in items]
            *sources, dest = items
            sources = [
                s
                for s in sources
                if not s.startswith("<<")
                and not (ins.keyword == "ADD" and re.match(r"^(\w+://|git@)", s))
            ]
            if sources:
                dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
                if dest.endswith("/") or len(sources) > 1:
                    dest_abs = dest_abs.rstrip("/") + "/"
                out.append(Copy(sources, dest_abs, ins.line))
    return out


def env_vars(args: str) -> dict[str, str]:
    """``ENV A=1 B="x y"`` or the legacy ``ENV A 1``."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


# --- the build context's ignore file (BuildKit: <Dockerfile>.dockerignore, else .dockerignore)


def ignore_rules(dockerfile: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(exception?, regex) per pattern, in order: the last one that matches decides."""
    own = dockerfile.with_name(dockerfile.name + ".dockerignore")
    path = own if own.is_file() else REPO / ".dockerignore"
    rules = []
    for raw in path.read_text().splitlines() if path.is_file() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        # a pattern that matches a directory also matches everything below it
        rules.append((negate, re.compile(rx + "(?:/.*)?")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    result = False
    for negate, rx in rules:
        if rx.fullmatch(path):
            result = not negate
    return result


def _files_below(path: Path) -> Iterator[Path]:
    """Files inside a directory, bytecode caches and built extensions aside (the ignore files
    drop those: the image builds its own)."""
    for p in sorted(path.rglob("*")) if path.is_dir() else []:
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so"):
            yield p


# --- what an image must hold ----------------------------------------------------------------


def _workdir(instructions: list[Instruction]) -> str:
    workdir = "/"
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
    return workdir


def in_image(path: str, workdir: str, copied: list[Copy]) -> bool:
    """Whether repository path ``path`` lands at WORKDIR/``path`` in the image. A directory
    source puts its contents at the destination; a file goes into a destination ending in /
    under its own name."""
    want = posixpath.join(workdir, path)
    for c in copied:
        for pattern in c.sources:
            pattern = posixpath.normpath(pattern.lstrip("/"))
            for match in (
                sorted(REPO.glob(pattern)) if re.search(r"[*?\[]", pattern) else [REPO / pattern]
            ):
                src = rel(match)
                if match.is_dir():
                    dest = posixpath.normpath(c.dest)
                    if path == src and dest == want:
                        return True
                    if path.startswith(src + "/"):
                        if posixpath.join(dest, path[len(src) + 1 :]) == want:
                            return True
                elif path == src:
                    target = c.dest + posixpath.basename(src) if c.dest.endswith("/") else c.dest
                    if posixpath.normpath(target) == want:
                        return True
    return False


def needed_in_image(instructions: list[Instruction]) -> list[str]:
    """Repository paths the image's set-up and CMD read: the set-up's Makefile prerequisites,
    pyproject's readme and packages, the default job config, and scripts RUN calls."""
    makefile = (REPO / "Makefile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M)
    assert stamp, "Makefile has no $(STAMP): rule"
    needed = stamp.group(1).split()
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    needed += [readme.group(1)] if readme else []
    include = re.search(r"^include\s*=\s*\[([^\]]*)\]", pyproject, re.M)
    assert include, "pyproject.toml has no [tool.setuptools.packages.find] include"
    needed += [p.strip(" \"'*") for p in include.group(1).split(",") if p.strip()]
    needed.append(rel(DEFAULT_CONFIG))
    for ins in instructions:
        if ins.keyword == "RUN":
            needed += [
                p
                for p in re.findall(r"(?<![\w/.$-])((?:[\w-]+/)+[\w.-]+\.(?:py|sh))\b", ins.args)
                if (REPO / p.split("/")[0]).exists()
            ]
    return needed


def copy_problems(dockerfile: Path, text: str | None = None) -> list[str]:
    """What would break this Dockerfile's COPY/ADD steps or leave its image incomplete."""
    instructions = parse_dockerfile(dockerfile.read_text() if text is None else text)
    copied = copies(instructions)
    rules = ignore_rules(dockerfile)
    found = []
    for c in copied:
        for src in c.sources:
            clean = posixpath.normpath(src.lstrip("/"))
            where = f"{rel(dockerfile)}:{c.line}: {src}"
            if "$" in clean:
                found.append(f"{where}: unresolved variable")
                continue
            if clean.startswith(".."):
                found.append(f"{where}: outside the build context")
                continue
            matches = sorted(REPO.glob(clean)) if re.search(r"[*?\[]", clean) else [REPO / clean]
            matches = [m for m in matches if m.exists()]
            if not matches:
                found.append(f"{where}: no such file or directory in the repository")
            for m in matches:
                for f in [m, *_files_below(m)]:
                    if ignored(rel(f), rules):
                        found.append(f"{where}: {rel(f)} is left out by the .dockerignore")
                        break
    workdir = _workdir(instructions)
    for path in needed_in_image(instructions):
        if not in_image(path, workdir, copied):
            found.append(f"{rel(dockerfile)}: {path} is not copied to {workdir}/{path}")
    return found


# --- image names: built in the README, used by the cluster files ---------------------------


def readme_registry(readme: str) -> str:
    m = re.search(r"^\s*REGISTRY=(\S+)", readme, re.M)
    assert m, "README sets no REGISTRY=... before its docker build commands"
    return m.group(1)


def docker_commands(text: str, verb: str) -> Iterator[list[str]]:
    """Arguments of every ``docker VERB ...`` in a text (comment markers and trailing
    comments dropped)."""
    for line in text.splitlines():
        m = re.search(rf"\bdocker {verb}\b(.*)$", line)
        if m:
            yield shlex.split(m.group(1).split(" #")[0])


def built_images(text: str, registry: str) -> dict[str, tuple[str, str]]:
    """Image name -> (Dockerfile, build context) for each ``docker build -t``."""
    out = {}
    for args in docker_commands(text, "build"):
        dockerfile, context, tags = "Dockerfile", "", []
        it = iter(args)
        for a in it:
            if a in ("-f", "--file"):
                dockerfile = next(it)
            elif a in ("-t", "--tag"):
                tags.append(next(it))
            elif not a.startswith("-"):
                context = a
        for tag in tags:
            name = tag.replace("${REGISTRY}", registry).replace("$REGISTRY", registry)
            out[name] = (dockerfile, context)
    return out


def cluster_images(doc: Any) -> set[str]:
    """Values of ``image``, ``head_image``, ``worker_image`` anywhere in a YAML document."""
    found: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("image", "head_image", "worker_image") and isinstance(value, str):
                found.add(value)
            else:
                found |= cluster_images(value)
    elif isinstance(doc, list):
        for item in doc:
            found |= cluster_images(item)
    return found


def cluster_gpus(path: str, doc: dict[str, Any]) -> float:
    """GPUs of a cluster file at its maximum size, as `dist-train validate` reads them."""
    if doc.get("kind") == "RayJob":
        nodes = rayjob_nodes(doc, path)[0]
    else:
        nodes = launcher_limits(doc, path).largest(lambda n: n.gpus)
    return sum(n.gpus * n.count for n in nodes)


def image_problems(readme: str, cluster_files: dict[str, Any]) -> list[str]:
    """Images named by cluster files (path -> parsed YAML) against the README's builds."""
    registry = readme_registry(readme)
    built = built_images(readme, registry)
    pushed = {
        a.replace("${REGISTRY}", registry).replace("$REGISTRY", registry)
        for args in docker_commands(readme, "push")
        for a in args
    }
    found = []
    for dockerfile in DOCKERFILES:
        if rel(dockerfile) not in {d for d, _ in built.values()}:
            found.append(f"README builds no image from {rel(dockerfile)}")
    for name, (source, context) in built.items():
        if context != ".":
            found.append(f"README builds {name} from context {context!r}, not '.' (the repo)")
        if name not in pushed:
            found.append(f"README builds {name} but does not docker push it")
        if not (REPO / source).is_file():
            found.append(f"README builds {name} from {source}, which does not exist")
    for dockerfile in DOCKERFILES:  # the usage lines at the top of each Dockerfile
        for name, (source, _) in built_images(dockerfile.read_text(), registry).items():
            if name not in built:
                found.append(f"{rel(dockerfile)} builds {name}, a name the README does not")
            elif built[name][0] != source:
                found.append(f"{rel(dockerfile)} builds {name} from {source}, the README not")
    for path, doc in cluster_files.items():
        images = cluster_images(doc)
        if not images:
            found.append(f"{path} names no image")
        if len(images) > 1:
            found.append(f"{path} mixes images {sorted(images)} (Ray needs one Python)")
        for image in sorted(images):
            if image not in built:
                found.append(f"{path}: image {image} is none the README builds {sorted(built)}")
            elif cluster_gpus(path, doc) and built[image][0] != "docker/Dockerfile.cuda":
                found.append(f"{path} has GPUs but runs {image}, not the CUDA image")
        rows = [line for line in readme.splitlines() if line.startswith("|") and path in line]
        if not rows:
            found.append(f"README's image table has no row for {path}")
        for image in sorted(images):
            if rows and not any(image in row for row in rows):
                found.append(f"README's row for {path} does not name its image {image}")
    return found


def load_cluster_files() -> dict[str, Any]:
    return {rel(p): yaml.safe_load(p.read_text()) for p in CLUSTER_FILES}


# --- the stack each Dockerfile installs ----------------------------------------------------


def makefile_defaults() -> dict[str, str]:
    """The Makefile's ``?=`` defaults, as make expands them where no venv is yet (an image's
    build: the FBGEMM build defaults to the one a venv holds)."""
    text = (REPO / "Makefile").read_text()
    names = re.findall(r"^(\w+)\s*\?=", text, re.M)
    show = "show: ; @" + " ".join(f"echo '{n}=$({n})';" for n in names)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    argv = ["make", "-s", "-C", str(REPO), "VENV=/nonexistent-venv", "--eval", show, "show"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def setup_call(instructions: list[Instruction]) -> tuple[dict[str, str], dict[str, str]]:
    """(ENV in force, make variables) of the RUN that calls ``make setup``."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            env.update(env_vars(ins.args))
        elif ins.keyword == "RUN" and "make setup" in ins.args:
            words = shlex.split(ins.args.split("make setup", 1)[1].split("&&")[0])
            return env, dict(w.split("=", 1) for w in words if "=" in w)
    raise AssertionError("no RUN make setup")


def _package(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower(), version


def stack_problems(dockerfile: Path, text: str | None = None) -> list[str]:
    """The wheels a Dockerfile's ``make setup`` call installs, against its variant (the
    suffix: cpu or cuda)."""
    variant = dockerfile.name.split(".", 1)[1]
    instructions = parse_dockerfile(dockerfile.read_text() if text is None else text)
    name = rel(dockerfile)
    env, make_vars = setup_call(instructions)
    defaults = makefile_defaults()
    fbgemm, version = _package(make_vars.get("FBGEMM_PACKAGE", defaults["FBGEMM_PACKAGE"]))
    _, default_version = _package(defaults["FBGEMM_PACKAGE"])
    index = env.get("PIP_EXTRA_INDEX_URL", env.get("PIP_INDEX_URL", ""))
    base = next(i.args for i in instructions if i.keyword == "FROM").split()[-1]
    found = []
    if version != default_version:
        found.append(f"{name}: fbgemm {version}, the Makefile pins {default_version}")
    makefile = (REPO / "Makefile").read_text()
    together = r"install\b.*\"torch==\$\(TORCH_VERSION\)\" \"\$\(FBGEMM_PACKAGE\)\""
    if not re.search(together, makefile):
        found.append("Makefile's setup does not install torch and $(FBGEMM_PACKAGE) together")
    checks = [i.args for i in instructions if i.keyword == "RUN" and "check_stack.py" in i.args]
    if not any(re.search(rf"check_stack\.py {variant}\b", c) for c in checks):
        found.append(f"{name}: no RUN ... docker/check_stack.py {variant} after the set-up")
    if variant == "cuda":
        if fbgemm != "fbgemm-gpu":
            found.append(f"{name}: installs {fbgemm}, not the CUDA build fbgemm-gpu")
        cu = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)/?", index)
        if not cu:
            found.append(f"{name}: torch index {index!r} is not a CUDA one (…/whl/cuXYZ)")
        image = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-\w+-ubuntu(\d+\.\d+)", base)
        if not image:
            found.append(f"{name}: base {base} is not nvidia/cuda:X.Y.Z-<flavour>-ubuntuNN.NN")
        else:
            if cu and image.group(1) != cu.group(1):
                found.append(f"{name}: base image CUDA {image.group(1)}, torch index {index}")
            python = UBUNTU_PYTHON.get(image.group(2))
            if python not in WHEEL_PYTHONS:
                found.append(f"{name}: ubuntu {image.group(2)}'s python {python} has no wheels")
    elif variant == "cpu":
        if fbgemm != "fbgemm-gpu-cpu":
            found.append(f"{name}: installs {fbgemm}, not fbgemm-gpu-cpu")
        if index.rstrip("/") != "https://download.pytorch.org/whl/cpu":
            found.append(f"{name}: torch index {index!r} is not the CPU one")
        official = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?(?:-\w+)*", base)
        if not official:
            found.append(f"{name}: base {base} is not python:3.X-...")
        elif (int(official.group(1)), int(official.group(2))) not in WHEEL_PYTHONS:
            found.append(f"{name}: {base}'s python has no torch / fbgemm wheels")
    else:
        found.append(f"{name}: unknown variant {variant!r} (Dockerfile.cpu or .cuda)")
    return found


# --- tests -----------------------------------------------------------------------------------


def test_there_are_both_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


def test_parser_joins_continuations_and_skips_stages_and_heredocs() -> None:
    text = (
        "# escape=\\\nFROM python:3.11 AS build\nARG SRC=dist_train\n"
        "COPY --chown=0:0 pyproject.toml \\\n  # a comment inside\n  Makefile ./\n"
        'COPY ["README.md", "/opt/x/"]\nCOPY --from=build /opt/venv /opt/venv\n'
        "COPY $SRC ./$SRC\nRUN <<EOF\nCOPY nope /\nEOF\nCOPY <<EOF /etc/x\nhi\nEOF\n"
        "WORKDIR /w\nADD https://example.com/a.tgz launch/c*/ ./\n"
    )
    got = [(c.sources, c.dest) for c in copies(parse_dockerfile(text))]
    assert got == [
        (["pyproject.toml", "Makefile"], "/"),
        (["README.md"], "/opt/x/"),
        (["dist_train"], "/dist_train"),
        (["launch/c*/"], "/w/"),
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists_and_reaches_the_image(dockerfile: Path) -> None:
    assert copy_problems(dockerfile) == []


def test_copy_problems_are_found(tmp_path: Path) -> None:
    good = (DOCKER / "Dockerfile.cuda").read_text()
    missing = good.replace("COPY planners ./planners", "COPY planners tests/nope* ./planners/")
    assert any("tests/nope*: no such file" in p for p in copy_problems(DOCKERFILES[1], missing))
    dropped = good.replace("COPY launch ./launch\n", "")
    assert any(
        "launch/configs/default.yaml is not copied" in p
        for p in copy_problems(DOCKERFILES[1], dropped)
    )
    flattened = good.replace("COPY launch ./launch", "COPY launch ./")  # launch's contents
    assert any(
        "launch/configs/default.yaml is not copied" in p
        for p in copy_problems(DOCKERFILES[1], flattened)
    )
    no_script = good.replace("COPY docker/check_stack.py ./docker/\n", "")
    assert any(
        "docker/check_stack.py is not copied" in p for p in copy_problems(DOCKERFILES[1], no_script)
    )
    # a source the ignore file leaves out of the context
    other = DOCKER / "Dockerfile.cuda"
    rules = ignore_rules(other)
    assert ignored(".venv/bin/python", rules) and ignored("dist_train/__pycache__/x.pyc", rules)
    assert not ignored("dist_train/config/schema.py", rules) and not ignored("Makefile", rules)
    assert not ignored("docker/check_stack.py", rules) and ignored("docker/Dockerfile.cpu", rules)
    docs = good.replace("COPY launch ./launch", "COPY launch ./launch\nCOPY docs ./docs")
    assert any("is left out by the .dockerignore" in p for p in copy_problems(other, docs))


def test_cluster_files_use_the_images_the_readme_builds() -> None:
    assert image_problems(README.read_text(), load_cluster_files()) == []


def test_image_problems_are_found() -> None:
    readme = README.read_text()
    files = load_cluster_files()
    aws = "launch/clusters/aws-gpu.yaml"
    renamed = json.loads(json.dumps(files))
    renamed[aws]["docker"]["image"] = "dist-train:cuda"  # the old name: not pushed anywhere
    problems = image_problems(readme, renamed)
    assert any(f"{aws}: image dist-train:cuda is none" in p for p in problems), problems
    cpu_on_gpus = json.loads(json.dumps(files))
    cpu_on_gpus[aws]["docker"]["image"] = "registry.example.com/dist-train:cpu"
    problems = image_problems(readme, cpu_on_gpus)
    assert any(f"{aws} has GPUs but runs" in p for p in problems), problems
    assert any("does not name its image" in p for p in problems), problems
    unpushed = readme.replace("docker push $REGISTRY/dist-train:cuda\n", "")
    assert any("does not docker push" in p for p in image_problems(unpushed, files))


def test_rayjob_configs_are_in_their_images() -> None:
    """A RayJob's entrypoint reads --config relative to the pod's workingDir, the WORKDIR
    of the Dockerfile its image is built from."""
    readme = README.read_text()
    built = built_images(readme, readme_registry(readme))
    for path, doc in load_cluster_files().items():
        entrypoint = (doc.get("spec") or {}).get("entrypoint")
        if not entrypoint:
            continue
        config = re.search(r"--config\s+(\S+)", entrypoint)
        assert config, path
        for image in cluster_images(doc):
            instructions = parse_dockerfile((REPO / built[image][0]).read_text())
            workdir = _workdir(instructions)
            assert in_image(config.group(1), workdir, copies(instructions)), (path, image)
            for container in _containers(doc):
                assert container.get("workingDir") == workdir, (path, container.get("name"))


def _containers(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "containers" and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _containers(item)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_installs_its_own_stack(dockerfile: Path) -> None:
    assert stack_problems(dockerfile) == []


def test_swapped_stacks_are_found() -> None:
    cpu, cuda = DOCKERFILES
    cpu_text, cuda_text = cpu.read_text(), cuda.read_text()
    # the CUDA recipe in the CPU file and the other way round
    assert stack_problems(cpu, cuda_text) and stack_problems(cuda, cpu_text)
    cpu_fbgemm = cuda_text.replace("FBGEMM_PACKAGE=fbgemm-gpu==", "FBGEMM_PACKAGE=fbgemm-gpu-cpu==")
    assert any("not the CUDA build" in p for p in stack_problems(cuda, cpu_fbgemm))
    cpu_index = re.sub(r"whl/cu\d+", "whl/cpu", cuda_text)
    assert any("is not a CUDA one" in p for p in stack_problems(cuda, cpu_index))
    mixed = re.sub(r"whl/cu\d+", "whl/cu128", cuda_text)
    assert any("base image CUDA 13" in p for p in stack_problems(cuda, mixed))
    cuda_torch = cpu_text.replace("whl/cpu", "whl/cu130")
    assert any("not the CPU one" in p for p in stack_problems(cpu, cuda_torch))


def _check_stack() -> Any:
    spec = importlib.util.spec_from_file_location("check_stack", DOCKER / "check_stack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_stack_tells_this_venvs_build() -> None:
    """docker/check_stack.py, run by each build: this venv's stack passes as its own kind
    and fails as the other."""
    import torch

    check = _check_stack()
    mine, other = ("cpu", "cuda") if torch.version.cuda is None else ("cuda", "cpu")
    assert check.problems(mine) == []
    assert len(check.problems(other)) >= 2  # torch and fbgemm_gpu are both named
    assert check.problems("rocm") == ["unknown variant 'rocm'; use cpu or cuda"]
