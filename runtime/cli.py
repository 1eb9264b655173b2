"""engine-run: generate from an engine, streaming the answer to the terminal."""
from __future__ import annotations

import sys
import time

import click

from kiln.builder.cli import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", "engine_dir", required=True, type=click.Path(), help="Engine directory.")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the engine's chat template.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--min-p", type=float, default=0.0, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--presence-penalty", type=float, default=0.0, show_default=True)
@click.option("--frequency-penalty", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop text (repeatable).")
@click.option("--min-tokens", type=int, default=0, show_default=True,
              help="Generate at least this many tokens before end of text or a stop ends it.")
@click.option("--json-object", is_flag=True,
              help="Answer with one JSON object (each token picked among those that continue one).")
@click.option("--json-schema", "schema_path", type=click.Path(dir_okay=False), default=None,
              help="Answer with one JSON value valid against the JSON schema in this file.")
@click.option("--regex", default=None,
              help="Answer with text that matches this regular expression (as re.fullmatch).")
@click.option("--grammar", "grammar_path", type=click.Path(dir_okay=False), default=None,
              help="Answer with a sentence of the EBNF grammar (GBNF, start rule root) in this file.")
@click.option("--num-beams", type=int, default=1, show_default=True,
              help="Beam search of this many beams (greedy; each beam printed, best first).")
@click.option("--length-penalty", type=float, default=1.0, show_default=True,
              help="With --num-beams: beams score cum_log_prob / length ** length_penalty.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@one_line_errors
def run_main(engine_dir, prompt, chat, max_new_tokens, temperature, top_k, top_p, min_p,
             repetition_penalty, presence_penalty, frequency_penalty, seed, stop, min_tokens,
             json_object, schema_path, regex, grammar_path, num_beams, length_penalty, device):
    """Generate from a Kiln engine and stream the answer."""
    from kiln.builder.errors import KilnError
    from kiln.runtime import ModelRunner
    from kiln.runtime.json_schema import compile_schema
    from kiln.runtime.serve.detokenizer import TextStream

    def read(path, what):
        try:
            return open(path, encoding="utf-8").read()
        except OSError as e:
            raise KilnError(f"cannot read the {what} {path}: {e.strerror}") from None

    schema = None if schema_path is None else compile_schema(read(schema_path, "JSON schema"))
    grammar = None if grammar_path is None else read(grammar_path, "grammar")
    start = time.perf_counter()
    with ModelRunner.from_dir(engine_dir, device=None if device == "auto" else device) as runner:
        ids = runner.tokenizer.chat(prompt) if chat else runner.tokenizer.encode(prompt)
        loaded = time.perf_counter()
        if num_beams > 1:
            _print_beams(runner, ids, num_beams, length_penalty, max_new_tokens, stop, loaded)
            return
        stream = runner.generate(
            [ids], max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=1 if temperature == 0.0 else top_k, top_p=top_p, min_p=min_p,
            repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, random_seed=seed,
            stop_words_list=list(stop) or None, streaming=True, return_dict=True,
            min_tokens=min_tokens, json_object=json_object, json_schema=schema, regex=regex,
            grammar=grammar)
        # A character split across tokens is held back until it completes.
        text, sent, first, out = TextStream(runner.tokenizer.decode), len(ids), None, None
        for out in stream:
            n = int(out["sequence_lengths"][0, 0])
            if first is None:
                first = time.perf_counter()
            sys.stdout.write(text.add(out["output_ids"][0, 0, sent: n].tolist(), False))
            sys.stdout.flush()
            sent = n
        done = time.perf_counter()
        new = int(out["sequence_lengths"][0, 0]) - len(ids)
        sys.stdout.write(text.add([], True) + "\n")
        sys.stdout.flush()
        click.echo(f"[{runner.device}: {new} tokens, load {loaded - start:.2f}s, first token "
                   f"{(first or done) - loaded:.2f}s, {new / max(done - loaded, 1e-9):.1f} tok/s, "
                   f"finish: {out['finish_reasons'][0]}]", err=True)


def _print_beams(runner, ids, num_beams, length_penalty, max_new_tokens, stop, loaded) -> None:
    """A beam search's beams, best first, each with its cumulative log-probability."""
    out = runner.generate([ids], max_new_tokens=max_new_tokens, num_beams=num_beams,
                          length_penalty=length_penalty, stop_words_list=list(stop) or None,
                          return_dict=True)
    done = time.perf_counter()
    for b in range(num_beams):
        tokens = out["output_ids"][0, b, len(ids): out["sequence_lengths"][0, b]].tolist()
        click.echo(f"[beam {b}, cum_log_prob {out['cum_log_probs'][0][b]:.3f}] "
                   f"{runner.tokenizer.decode(tokens)}")
    click.echo(f"[{runner.device}: {num_beams} beams, {done - loaded:.2f}s, "
               f"finish: {out['finish_reasons'][0]}]", err=True)
