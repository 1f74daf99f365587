"""Loading definitions: what is accepted, what is refused (with one clear line), and the
stored form (expanded data, sha256, sources, git)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from wfe.engine.definitions import (
    NAMESPACE_REQUIRED,
    Approval,
    DefinitionError,
    DefinitionSyntaxError,
    InvalidDefinition,
    OnStageFailure,
    build_definition,
    canonical_json,
    load_definition,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "pipeline" / "pipeline.toml"


def refused(write: Any, text: str) -> str:
    """Load ``text`` as main.toml; return the one-line message it is refused with."""
    path = write("main.toml", text)
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_the_example_pipeline_loads(minimal: str) -> None:
    """The shipped example is valid and its include supplies namespace and policy."""
    definition = load_definition(EXAMPLE)
    assert definition.name == "pipeline"
    assert definition.namespace == "examples"  # from common.toml
    assert definition.policy.approval is Approval.NONE
    assert [s.name for s in definition.stages] == ["calibrate", "grid", "map"]
    assert [Path(s).name for s in definition.sources] == ["common.toml", "pipeline.toml"]
    assert definition.query is not None
    assert definition.stage("map").max_inputs is None


def test_minimal_definition_gets_defaults(write: Any, minimal: str) -> None:
    """Omitted tables and keys take their documented defaults."""
    definition = load_definition(write("main.toml", minimal))
    assert definition.policy.approval is Approval.REQUIRED
    assert definition.approval_required
    assert definition.policy.on_stage_failure is OnStageFailure.FAIL
    assert definition.policy.max_allocations == 3
    stage = definition.stage("only")
    assert (stage.retries, stage.priority, stage.max_inputs, stage.consumes) == (0, 0, None, None)
    assert stage.requires.cpus == 1 and stage.requires.memory is None
    assert stage.timeouts.attempt is None
    assert definition.query is None and dict(definition.params) == {}


@pytest.mark.parametrize(
    "workflow",
    [
        '[workflow]\nname = "demo"\n',
        '[workflow]\nname = "demo"\nnamespace = ""\n',
        '[workflow]\nname = "demo"\nnamespace = "   "\n',
    ],
)
def test_missing_or_empty_namespace_is_refused(write: Any, workflow: str) -> None:
    """Without a namespace the definition is refused with the rule and the fix."""
    message = refused(write, workflow + '[[stages]]\nname = "s"\nrscript = "x"\n')
    assert message.endswith(NAMESPACE_REQUIRED)
    assert message == f"{Path(message.split(':')[0])}: {NAMESPACE_REQUIRED}"


def test_syntax_error_names_file_and_line(write: Any) -> None:
    """A TOML syntax error keeps its line number, after the file name."""
    message = refused(write, '[workflow]\nname = "demo"\nnamespace = "t"\nbroken = \n')
    assert message.split(":")[1] == "4"
    assert message.startswith(str(Path(message.split(":")[0]))) and "main.toml:4: " in message
    assert isinstance(_error(write, '[workflow]\nname = "x\n'), DefinitionSyntaxError)


def test_syntax_error_in_an_include_names_the_include(write: Any, minimal: str) -> None:
    """The file with the mistake is named, not the main file."""
    write("inc.toml", "a = 1\n\n[policy\n")
    message = refused(
        write, minimal.replace('namespace = "test"', 'namespace = "t"\nincludes = ["inc.toml"]')
    )
    assert "inc.toml:3: " in message


def test_file_that_is_not_utf8_names_the_line(write: Any, tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are a syntax error at their line."""
    path = tmp_path / "main.toml"
    path.write_bytes(b'[workflow]\nname = "\xff"\n')
    with pytest.raises(DefinitionSyntaxError, match=r"main.toml:2: not valid UTF-8$"):
        load_definition(path)


def _error(write: Any, text: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        load_definition(write("main.toml", text))
    return info.value


STAGE = '[[stages]]\nname = "s"\nrscript = "x"\n'
HEAD = '[workflow]\nname = "demo"\nnamespace = "t"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown keys, with a suggestion when one is close
        ("bogus = 1\n" + HEAD + STAGE, "bogus: unknown key (known: workflow, policy"),
        (
            HEAD + STAGE + "max_input = 3\n",
            "stages[0].max_input: unknown key (did you mean max_inputs?)",
        ),
        (
            HEAD + STAGE + "requires = { cpu = 2 }\n",
            "stages[0].requires.cpu: unknown key (did you mean cpus?)",
        ),
        (
            HEAD + "[policy]\napprove = 'none'\n" + STAGE,
            "policy.approve: unknown key (did you mean approval?)",
        ),
        (
            "includes = ['a.toml']\n" + HEAD + STAGE,
            "includes: put `includes = [...]` under [workflow]",
        ),
        # wrong types
        (
            HEAD + STAGE + STAGE.replace('"s"', '"t"') + 'max_inputs = "3"\nconsumes = "s"\n',
            "stages[1].max_inputs: expected an integer",
        ),
        (HEAD + STAGE + "retries = 1.5\n", "stages[0].retries: expected an integer"),
        (HEAD + STAGE + "after = 's'\n", "stages[0].after: expected an array of strings"),
        (HEAD + STAGE + "after = [1]\n", "stages[0].after: expected an array of non-empty strings"),
        (HEAD + STAGE + "priority = true\n", "stages[0].priority: expected an integer"),
        (HEAD + STAGE + "params = 3\n", "stages[0].params: expected a table"),
        (HEAD + STAGE + "requires = 4\n", "stages[0].requires: expected a table"),
        (
            HEAD + STAGE + "timeouts = { attempt = '10' }\n",
            "stages[0].timeouts.attempt: expected a number",
        ),
        (HEAD.replace('"demo"', "3") + STAGE, "workflow.name: expected a string"),
        (HEAD.replace('"t"', "3") + STAGE, "workflow.namespace: expected a string"),
        (HEAD + "version = 1.0\n" + STAGE, "workflow.version: expected a string"),
        (
            HEAD + "[policy]\napproval = 'maybe'\n" + STAGE,
            "policy.approval: expected one of 'required', 'none', not 'maybe'",
        ),
        (
            HEAD + "[policy]\non_stage_failure = 1\n" + STAGE,
            "policy.on_stage_failure: expected one of 'fail', 'complete'",
        ),
        ("stages = 3\n" + HEAD, "stages: expected an array"),
        ("workflows = 1\n" + HEAD + STAGE, "workflows: unknown key (did you mean workflow?)"),
        (HEAD + "nmae = 1\n" + STAGE, "workflow.nmae: unknown key (did you mean name?)"),
        # ranges and rules
        (
            HEAD + STAGE + "max_inputs = 0\nconsumes = 'query'\n[query]\n",
            "stages[0].max_inputs: must be at least 1, not 0",
        ),
        (HEAD + STAGE + "retries = -1\n", "stages[0].retries: must be at least 0, not -1"),
        (
            HEAD + STAGE + "requires = { cpus = 0 }\n",
            "stages[0].requires.cpus: must be at least 1, not 0",
        ),
        (
            HEAD + STAGE + "requires = { memory = '4X' }\n",
            "stages[0].requires.memory: expected bytes or a size like",
        ),
        (
            HEAD + STAGE + "timeouts = { overall = 0 }\n",
            "stages[0].timeouts.overall: expected a positive number of seconds",
        ),
        (
            HEAD + STAGE + "backoff = { multiplier = 0.5 }\n",
            "stages[0].backoff.multiplier: must be at least 1",
        ),
        (
            HEAD + "[policy]\nmax_allocations = 0\n" + STAGE,
            "policy.max_allocations: must be at least 1, not 0",
        ),
        (
            HEAD.replace('"demo"', '"my-flow"') + STAGE,
            "workflow.name: workflow name 'my-flow' is not id-safe",
        ),
        (HEAD.replace('"t"', '"a b"') + STAGE, "workflow.namespace: namespace 'a b': use letters"),
        (HEAD + STAGE.replace('"s"', '"query"'), "stages[0].name: 'query' is reserved"),
        (HEAD + STAGE.replace('"s"', '"a b"'), "stages[0].name: stage name 'a b': use letters"),
        (HEAD, "stages: at least one [[stages]] is required"),
        (
            HEAD + '[[stages]]\nname = "s"\n',
            "stages[0]: stage 's' needs exactly one of rscript, action or work (neither set)",
        ),
        (
            HEAD + STAGE + 'action = "x.y"\n',
            "stages[0]: stage 's' needs exactly one of rscript, action or work (both set)",
        ),
        (
            HEAD + STAGE + 'work = "calib"\n',
            "stages: [0]: a stage has one of rscript, action or work, not work and rscript",
        ),
        (
            HEAD + '[[stages]]\nname = "s"\nwork = "calib"\nparams = { pipeline = "x" }\n',
            "stages: stage 's': work names the bucket; params.pipeline is not allowed",
        ),
        (
            HEAD + '[[stages]]\nname = "s"\nwork = " "\n',
            "stages[0].work: expected a non-empty work pipeline name",
        ),
        (
            HEAD + '[[stages]]\nname = "s"\naction = "nodot"\n',
            "stages[0].action: action 'nodot': expected <domain>.<action>",
        ),
        (
            HEAD + STAGE + "max_inputs = 2\n",
            "stages[0].max_inputs: stage 's' has no inputs (add consumes",
        ),
        (
            HEAD + STAGE + "consumes = 'query'\n",
            "stages[0].consumes: stage 's' consumes the query but there is no [query]",
        ),
        (
            HEAD + STAGE + "consumes = { stage = 's2', types = ['fits'] }\n",
            "stages[0].consumes: unknown product type 'fits'",
        ),
        (
            HEAD + STAGE + "consumes = { stage = 'query', types = ['qa'] }\n[query]\n",
            "stages[0].consumes: types filter an upstream stage's products",
        ),
        (HEAD + STAGE + "consumes = { types = ['qa'] }\n", "stages[0].consumes: missing stage"),
        (HEAD + STAGE + "consumes = 3\n", 'stages[0].consumes: expected "query", a stage name'),
        (HEAD + STAGE + "params = { inputs = [] }\n", "stages[0].params.inputs: reserved"),
        (
            HEAD + STAGE + "params = { t = '${nope}' }\n",
            "stages[0].params.t: refers to unknown parameter 'nope' (add [params.nope])",
        ),
        (
            HEAD + STAGE + "params = { deep = { list = [1, '${nope}'] } }\n",
            "stages[0].params.deep.list[1]: refers to unknown parameter 'nope'",
        ),
        (
            HEAD + "[params.x]\ntype = 'int'\ndefault = 'a'\n" + STAGE,
            "params.x.default: expected an integer",
        ),
        (
            HEAD + "[params.x]\ntype = 'float'\ndefault = true\n" + STAGE,
            "params.x.default: expected a number",
        ),
        (
            HEAD + "[params.x]\ntype = 'complex'\n" + STAGE,
            "params.x.type: expected one of 'str', 'int', 'float', 'bool'",
        ),
        (HEAD + "[params.x]\ndefault = 1\n" + STAGE, "params.x.type: required"),
        (
            HEAD + "[params.'a-b']\ntype = 'int'\n" + STAGE,
            "params.a-b: a parameter name is letters, digits and '_'",
        ),
        (
            HEAD + "[stage_defaults]\nretries = 'x'\n" + STAGE,
            "stage_defaults.retries: expected an integer",
        ),
        (HEAD + "[stage_defaults]\nname = 'x'\n" + STAGE, "stage_defaults.name: unknown key"),
        (HEAD + STAGE + "x = nan\n", "stages[0].x: expected a finite number, not nan"),
        (
            HEAD + STAGE + "[query]\nwhere = [{ field = 'a', op = 'like', value = 1 }]\n",
            "query.where[0].op: unknown op 'like'",
        ),
    ],
)
def test_bad_definitions_are_refused_with_one_clear_line(
    write: Any, text: str, expected: str
) -> None:
    """Each mistake is refused with the main file, the path and the problem on one line."""
    message = refused(write, text)
    file, _, rest = message.partition(": ")
    assert file.endswith("main.toml")
    assert rest.startswith(expected), rest


def test_several_problems_report_the_first_and_count_the_rest(write: Any) -> None:
    """Two wrong values: the first is named and the other counted."""
    message = refused(write, HEAD + STAGE + "retries = 'a'\npriority = 'b'\n")
    assert message.endswith("stages[0].retries: expected an integer (and 1 more)")


def test_stage_defaults_apply_to_every_stage_and_stages_override_them(write: Any) -> None:
    """A stage starts from [stage_defaults], deep-merged under its own keys."""
    definition = load_definition(
        write(
            "main.toml",
            HEAD
            + """
            [stage_defaults]
            retries = 4
            priority = 2
            params = { a = 1, b = 2 }
            timeouts = { attempt = 60, overall = 600 }
            requires = { memory = "2G", tags = ["gpu"] }

            [[stages]]
            name = "one"
            rscript = "x"
            params = { b = 3 }
            timeouts = { attempt = 30 }

            [[stages]]
            name = "two"
            rscript = "x"
            retries = 0
            requires = { cpus = 4 }
            """.replace("\n            ", "\n"),
        )
    )
    one, two = definition.stages
    assert (one.retries, one.priority, dict(one.params)) == (4, 2, {"a": 1, "b": 3})
    assert (one.timeouts.attempt, one.timeouts.overall) == (30.0, 600.0)
    assert (two.retries, two.requires.cpus, two.requires.memory) == (0, 4, 2 * 1024**3)
    assert two.requires.tags == ("gpu",)
    assert "stage_defaults" in definition.expanded  # expanded is the merged TOML, as written


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("512", 512),
        (1024, 1024),
        ("1K", 1024),
        ("4g", 4 * 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        ("2T", 2 * 1024**4),
    ],
)
def test_memory_takes_bytes_or_binary_suffixes(write: Any, memory: Any, expected: int) -> None:
    """``memory`` is bytes, or a number with K, M, G or T (powers of 1024)."""
    value = json.dumps(memory)
    definition = load_definition(
        write("main.toml", HEAD + STAGE + f"requires = {{ memory = {value} }}\n")
    )
    assert definition.stage("s").requires.memory == expected


def test_consumes_forms(write: Any) -> None:
    """``consumes`` is "query", a stage name, or a table with stage and product types;
    consuming a stage makes it a dependency."""
    definition = load_definition(
        write(
            "main.toml",
            HEAD
            + "[query]\n"
            + '[[stages]]\nname = "a"\nrscript = "x"\nconsumes = "query"\nmax_inputs = 5\n'
            + '[[stages]]\nname = "b"\nrscript = "x"\nconsumes = "a"\n'
            + '[[stages]]\nname = "c"\nrscript = "x"\nafter = ["b"]\n'
            + 'consumes = { stage = "a", types = ["science", "qa"] }\n',
        )
    )
    a, b, c = definition.stages
    assert a.consumes is not None and a.consumes.from_query and a.depends_on == ()
    assert b.consumes is not None and b.consumes.source == "a" and b.depends_on == ("a",)
    assert c.consumes is not None and c.consumes.types == ("science", "qa")
    assert c.depends_on == ("b", "a")


def test_sha256_is_of_the_canonical_expanded_form(write: Any, minimal: str) -> None:
    """The fingerprint ignores formatting and key order, and changes with any value."""
    first = load_definition(write("a.toml", minimal))
    reordered = minimal.replace(
        'name = "demo"\nnamespace = "test"', 'namespace = "test"\n# hi\nname   =   "demo"'
    )
    assert reordered != minimal
    second = load_definition(write("b.toml", reordered))
    third = load_definition(write("c.toml", minimal.replace('"noop"', '"noop2"')))
    assert first.sha256 == second.sha256 != third.sha256
    import hashlib

    assert first.sha256 == hashlib.sha256(canonical_json(first.expanded)).hexdigest()


def test_expanded_round_trips_through_json_to_the_same_definition() -> None:
    """A definition rebuilt from its stored JSON form equals the loaded one."""
    loaded = load_definition(EXAMPLE)
    stored = json.loads(json.dumps(loaded.expanded))
    rebuilt = build_definition(stored, sources=loaded.sources, git=loaded.git)
    assert rebuilt == loaded


def test_toml_dates_become_iso_strings(write: Any) -> None:
    """Dates in a definition are stored as ISO 8601 text (JSON has no dates)."""
    definition = load_definition(
        write(
            "main.toml",
            HEAD + STAGE + "params = { since = 2024-05-01, at = 2024-05-01T10:00:00Z }\n"
            "[query]\nwhere = [{ field = 'date', op = 'gte', value = 2024-05-01 }]\n",
        )
    )
    assert dict(definition.stage("s").params) == {
        "since": "2024-05-01",
        "at": "2024-05-01T10:00:00+00:00",
    }
    assert definition.query is not None
    assert definition.query.matches({"date": "2024-05-02"})
    assert not definition.query.matches({"date": "2024-04-30"})


def test_build_definition_refuses_unresolved_includes() -> None:
    """Data with includes left in is not mistaken for an expanded definition."""
    with pytest.raises(InvalidDefinition, match="workflow.includes: unresolved"):
        build_definition({"workflow": {"name": "a", "namespace": "b", "includes": ["x"]}})
    with pytest.raises(InvalidDefinition, match="workflow: required"):
        build_definition({})


# --- git ------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def test_git_commit_and_path_recorded_inside_a_work_tree(tmp_path: Path, minimal: str) -> None:
    """In a git work tree the definition records HEAD and its repo-relative path, and
    whether it (or an include) differs from HEAD."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "wf").mkdir()
    main = tmp_path / "wf" / "main.toml"
    main.write_text(
        minimal.replace('namespace = "test"', 'namespace = "t"\nincludes = ["inc.toml"]')
    )
    (tmp_path / "wf" / "inc.toml").write_text("[policy]\nmax_allocations = 2\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "x")
    head = _git(tmp_path, "rev-parse", "HEAD")

    clean = load_definition(main)
    assert clean.git is not None
    assert (clean.git.commit, clean.git.path, clean.git.dirty) == (head, "wf/main.toml", False)

    (tmp_path / "wf" / "inc.toml").write_text("[policy]\nmax_allocations = 3\n")
    dirty = load_definition(main)
    assert dirty.git is not None and dirty.git.dirty and dirty.git.commit == head


def test_git_is_none_outside_a_work_tree_or_without_commits(tmp_path: Path, minimal: str) -> None:
    """No work tree, or one without a commit: no git record."""
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "main.toml").write_text(minimal)
    # tmp_path may itself sit inside some repository; make sure it is not one of ours.
    if (
        subprocess.run(["git", "-C", str(outside), "rev-parse"], capture_output=True).returncode
        != 0
    ):
        assert load_definition(outside / "main.toml").git is None
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    (empty / "main.toml").write_text(minimal)
    assert load_definition(empty / "main.toml").git is None
