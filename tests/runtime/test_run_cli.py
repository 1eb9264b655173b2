"""engine-run: the streamed answer is ModelRunner.generate's, with its sampling options."""
from __future__ import annotations

from click.testing import CliRunner

from kiln import _core
from kiln.runtime import ModelRunner
from kiln.runtime.cli import run_main

PROMPT = "the quick brown fox"


def test_engine_run_streams_the_answer_of_generate(tiny_engine):
    """Whole characters only, however the tokens split them; --stop, --min-tokens and
    --json-object as generate's stop_words_list, min_tokens and json_object."""
    _, engine = tiny_engine("llama")
    with ModelRunner.from_dir(engine, device="cpu") as runner:
        tok = runner.tokenizer

        def answer(**kw):
            out = runner.generate([ids], max_new_tokens=12, end_id=tok.eos_id, top_k=1,
                                  return_dict=True, **kw)
            return out["output_ids"][0, 0, len(ids): out["sequence_lengths"][0, 0]].tolist()

        ids = tok.encode(PROMPT)
        free = answer()
        # a token of the answer that is a stop text of its own
        at = next(i for i, t in enumerate(free) if i >= 1 and t not in free[:i]
                  and tok.encode(tok.decode([t]), add_special_tokens=False) == [t])
        stop = tok.decode([free[at]])
        stopped = answer(stop_words_list=[stop])
        held = answer(stop_words_list=[stop], min_tokens=at + 3)
        braced = answer(json_object=True)
    assert stopped == free[: at + 1]
    table, state = tok.token_table(runner.vocab_size), _core.JsonObjectPrefix()
    assert braced != free and all(state.feed(table[t]) for t in braced)
    assert len(held) >= at + 3 and free[at] not in held[: at + 3]
    for args, tokens in (([], free), (["--stop", stop], stopped),
                         (["--stop", stop, "--min-tokens", str(at + 3)], held),
                         (["--json-object"], braced)):
        result = CliRunner().invoke(run_main, ["--engine", str(engine), "--prompt", PROMPT,
                                               "--max-new-tokens", "12", "--device", "cpu",
                                               *args])
        assert result.exit_code == 0, result.output
        assert result.stdout == tok.decode(tokens) + "\n", args
        assert f"cpu: {len(tokens)} tokens" in result.stderr


def test_engine_run_answers_with_a_value_of_the_json_schema(tiny_engine, tmp_path):
    """--json-schema FILE as generate's json_schema; a schema kiln cannot enforce, or no file,
    is a one-line error."""
    import json

    _, engine = tiny_engine("llama")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    with ModelRunner.from_dir(engine, device="cpu") as runner:
        tok = runner.tokenizer
        ids = tok.encode(PROMPT)
        out = runner.generate([ids], max_new_tokens=12, end_id=tok.eos_id, top_k=1,
                              return_dict=True, json_schema=schema)
        tokens = out["output_ids"][0, 0, len(ids): out["sequence_lengths"][0, 0]].tolist()
    args = ["--engine", str(engine), "--prompt", PROMPT, "--max-new-tokens", "12", "--device",
            "cpu"]
    result = CliRunner().invoke(run_main, [*args, "--json-schema", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == tok.decode(tokens) + "\n"
    path.write_text(json.dumps({"type": "object", "properties": {"n": {"pattern": "^a"}}}))
    for extra, message in ((["--json-schema", str(path)], "'pattern' is not supported"),
                           (["--json-schema", str(tmp_path / "none.json")],
                            "cannot read the JSON schema")):
        result = CliRunner().invoke(run_main, [*args, *extra])
        assert result.exit_code != 0 and message in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_engine_run_refuses_min_tokens_over_max_new_tokens(tiny_engine):
    _, engine = tiny_engine("llama")
    result = CliRunner().invoke(run_main, ["--engine", str(engine), "--prompt", PROMPT,
                                           "--max-new-tokens", "4", "--min-tokens", "5",
                                           "--device", "cpu"])
    assert result.exit_code != 0
    assert "min_tokens is 5 but max_new_tokens is 4" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_engine_run_prints_the_beams_of_a_beam_search(tiny_engine):
    """--num-beams: each beam of generate(num_beams=...) on a line, best first, with its
    cumulative log-probability."""
    _, engine = tiny_engine("llama")
    with ModelRunner.from_dir(engine, device="cpu") as runner:
        tok = runner.tokenizer
        ids = tok.encode(PROMPT)
        out = runner.generate([ids], max_new_tokens=8, num_beams=3, length_penalty=0.5,
                              return_dict=True)
        beams = [tok.decode(out["output_ids"][0, b, len(ids): out["sequence_lengths"][0, b]]
                            .tolist()) for b in range(3)]
    result = CliRunner().invoke(run_main, ["--engine", str(engine), "--prompt", PROMPT,
                                           "--max-new-tokens", "8", "--device", "cpu",
                                           "--num-beams", "3", "--length-penalty", "0.5"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "".join(
        f"[beam {b}, cum_log_prob {out['cum_log_probs'][0][b]:.3f}] {beams[b]}\n" for b in range(3))
    assert "cpu: 3 beams" in result.stderr
    bad = CliRunner().invoke(run_main, ["--engine", str(engine), "--prompt", PROMPT,
                                        "--num-beams", "12", "--device", "cpu"])
    assert bad.exit_code != 0 and "beam_width is 12 but must be in [1, 10]" in bad.output


def test_engine_run_answers_with_a_sentence_of_the_grammar(tiny_engine, tmp_path):
    import re

    _, engine = tiny_engine("llama")
    grammar = 'root ::= word ("-" word)?\nword ::= [a-c]{2,4}'
    with ModelRunner.from_dir(engine, device="cpu") as runner:
        tok = runner.tokenizer
        ids = tok.encode(PROMPT)
        out = runner.generate([ids], max_new_tokens=12, grammar=grammar, return_dict=True)
        tokens = out["output_ids"][0, 0, len(ids): out["sequence_lengths"][0, 0]].tolist()
    path = tmp_path / "answer.gbnf"
    path.write_text(grammar)
    result = CliRunner().invoke(run_main, ["--engine", str(engine), "--prompt", PROMPT,
                                           "--max-new-tokens", "12", "--device", "cpu",
                                           "--grammar", str(path)])
    assert result.exit_code == 0, result.output
    text = tok.decode([t for t in tokens if t != tok.eos_id])
    assert result.stdout == text + "\n" and re.fullmatch(r"[a-c]{2,4}(-[a-c]{2,4})?", text)
    missing = CliRunner().invoke(run_main, ["--engine", str(engine), "--prompt", PROMPT,
                                            "--grammar", str(tmp_path / "none.gbnf")])
    assert missing.exit_code != 0 and "cannot read the grammar" in missing.output


def test_engine_run_answers_with_text_that_matches_the_regex(tiny_engine):
    import re

    _, engine = tiny_engine("llama")
    pattern = r"[a-c]{2,5}-(on|off)"
    with ModelRunner.from_dir(engine, device="cpu") as runner:
        tok = runner.tokenizer
        ids = tok.encode(PROMPT)
        out = runner.generate([ids], max_new_tokens=12, regex=pattern, return_dict=True)
        tokens = out["output_ids"][0, 0, len(ids): out["sequence_lengths"][0, 0]].tolist()
    result = CliRunner().invoke(run_main, ["--engine", str(engine), "--prompt", PROMPT,
                                           "--max-new-tokens", "12", "--device", "cpu",
                                           "--regex", pattern])
    assert result.exit_code == 0, result.output
    assert result.stdout == tok.decode(tokens) + "\n" and re.fullmatch(pattern, tok.decode(tokens))
