"""The benchmark's report: medians over the rounds, ratios of seq2seq_jax's rates to
the peers', and the Markdown tables `seq2seq-jax benchmark` prints.
"""

from __future__ import annotations

import statistics
from typing import Any

from seq2seq_jax.bench.work import train_flops_per_sample


def _median(values: list[float]) -> float:
  return float(statistics.median(values))


def summarise(report: dict[str, Any]) -> None:
  """Medians, % of the matmul limit and ratios of ours to the peers' rates, from the
  per-round samples (report["samples"]), added to the report."""
  samples, shapes = report["samples"], report["shapes"]
  med = lambda key: _median(samples[key]) if key in samples else None
  flops = train_flops_per_sample(shapes["src_len"], shapes["tgt_len"], shapes["tgt_vocab"], shapes["latent"])
  limit = max(report["matmul_gflops"].values())
  report["train_flops_per_sample"] = flops
  report["matmul_limit_gflops"] = limit
  pct = lambda rate: None if rate is None else 100.0 * rate * flops / (limit * 1e9)
  train = {name.split("/", 1)[1]: med(name) for name in samples if name.startswith("train/")}
  report["train_samples_per_s"] = train
  report["train_pct_of_matmul_limit"] = {k: pct(v) for k, v in train.items()}
  batches = {int(k.split("/")[1]): med(k) for k in samples if k.startswith("train_batch/")}
  batches[shapes["batch"]] = train["seq2seq_jax"]
  report["seq2seq_jax_by_batch"] = {b: {"samples_per_s": v, "pct_of_matmul_limit": pct(v)}
                                    for b, v in sorted(batches.items())}
  epoch = {}
  for key in samples:
    if key.startswith("epoch/"):
      runs = samples[key]
      later = runs[1:] or runs  # the first epoch compiles (ours) or builds (Keras' fit)
      epoch[key.split("/", 1)[1]] = {
          "samples_per_s": _median([r["samples_per_s"] for r in later]),
          "first_epoch_s": runs[0]["seconds"],
          "rss_mib_per_epoch": [round(r["rss_mib"], 1) for r in runs],
          "rss_mib_consecutive_epochs": [round(x, 1) for x in samples.get(f"epoch_tail/{key[6:]}", [])],
          "compilations_after_first_epoch": sum(r.get("compilations", 0) for r in runs[1:])}
  report["epoch_real"] = epoch
  decode_seed = {k.split("/", 1)[1]: med(k) for k in samples if k.startswith("decode_seed/")}
  report["decode_seed_sentences_per_s"] = decode_seed
  report["decode_real"] = {k.split("/", 1)[1]: {
      "sentences_per_s": _median([r["sentences_per_s"] for r in samples[k]]),
      "mean_output_len": _median([r["mean_output_len"] for r in samples[k]])}
      for k in samples if k.startswith("decode_real/")}
  ratios = {}

  def ratio(name, ours, theirs):  # seq2seq_jax's rate over a peer's (> 1: ours is faster)
    if ours is not None and theirs is not None:
      ratios[name] = ours / theirs

  ours_train = train["seq2seq_jax"]
  keras_train = max(filter(None, [train.get("keras"), train.get("keras_fit")]), default=None)
  ratio("train vs keras", ours_train, keras_train)
  ratio("train vs torch", ours_train, train.get("torch"))
  ratio("train bfloat16 vs keras", train.get("seq2seq_jax_bf16"), keras_train)  # the peers run
  ratio("train bfloat16 vs torch", train.get("seq2seq_jax_bf16"), train.get("torch"))  # float32
  ours_epoch = epoch["seq2seq_jax"]["samples_per_s"]
  ratio("real-length epoch vs keras", ours_epoch, epoch.get("keras", {}).get("samples_per_s"))
  ratio("real-length epoch vs torch", ours_epoch, epoch.get("torch", {}).get("samples_per_s"))
  best_decode = max(v for k, v in decode_seed.items() if k.startswith("seq2seq_jax/"))
  keras_loop = decode_seed.get("keras_predict/1")  # the example's loop as published
  ratio("decode best batch vs keras loop", best_decode, keras_loop)
  ratio("decode bfloat16 best batch vs keras loop", max(
      (v for k, v in decode_seed.items() if k.startswith("seq2seq_jax_bf16/")), default=None), keras_loop)
  ratio("decode one sentence vs keras loop", decode_seed.get("seq2seq_jax/1"), keras_loop)
  ratio("decode one sentence vs keras loop with predict_on_batch", decode_seed.get("seq2seq_jax/1"),
        decode_seed.get("keras_predict_on_batch/1"))
  ratio("decode best batch vs torch best batch", best_decode,
        max((v for k, v in decode_seed.items() if k.startswith("torch/")), default=None))
  report["peak_rss_mib_at_batch"] = {k.split("/", 1)[1]: v[0] for k, v in samples.items()
                                     if k.startswith("peak_rss_batch")}
  report["ratios"] = ratios


def format_report(report: dict[str, Any]) -> str:
  """The report as Markdown tables (what the README carries)."""
  m, s = report["machine"], report["shapes"]
  fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
  lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; allocator {m['allocator']}; "
           + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
           + f". Medians of {report['rounds']} alternating rounds.", "",
           f"seq2seq_jax ran on {report['seq2seq_jax_devices']['devices']} XLA CPU device(s), as "
           "`seq2seq-jax train` does on this machine (XLA_FLAGS "
           f"`{report['seq2seq_jax_devices']['xla_flags'] or 'none'}`); Keras and PyTorch as their "
           "users run them, one process with every core.", "",
           f"Seed shapes: batch {s['batch']}, source {s['src_len']} x {s['src_vocab']}, target "
           f"{s['tgt_len']} x {s['tgt_vocab']}, LSTM {s['latent']}; "
           f"{report['train_flops_per_sample'] / 1e6:.0f} MFLOP per training sample; measured matmul "
           f"limit {report['matmul_limit_gflops']:.0f} GFLOP/s.", "",
           f"| training (seed shapes) | samples/s | % of matmul limit | compile s | peak RSS MiB at batch {s['batch']} |",
           "|---|---|---|---|---|"]
  train = report["train_samples_per_s"]
  for key, label in (("seq2seq_jax", "seq2seq_jax train step"),
                     ("seq2seq_jax_bf16", "seq2seq_jax, bfloat16 matmuls (matmul_dtype)"),
                     ("keras", "Keras 3 train_on_batch"),
                     ("keras_fit", "Keras 3 fit"), ("torch", "PyTorch nn.LSTM")):
    if key in train:
      framework = key.split("_fit")[0]
      lines.append(f"| {label} | {fmt(train[key])} | {fmt(report['train_pct_of_matmul_limit'][key], 1)} "
                   f"| {fmt(report['compile_s'].get(framework), 2)} | {fmt(report['peak_rss_mib_at_batch'].get(framework))} |")
  lines.append("")
  lines.append("Peak RSS over the whole run, larger batches included: " + ", ".join(
      f"{name} {fmt(v)} MiB" for name, v in report["peak_rss_mib"].items()) + ".")
  lines += ["", "| seq2seq_jax by batch size | samples/s | % of matmul limit |", "|---|---|---|"]
  for b, v in report["seq2seq_jax_by_batch"].items():
    lines.append(f"| batch {b} | {fmt(v['samples_per_s'])} | {fmt(v['pct_of_matmul_limit'], 1)} |")
  real = report["real_data"]
  lines += ["", f"Real-length epoch: {real['train_pairs']} {real['data']} pairs, source mean "
            f"{real['mean_src_len']:.1f} / max {real['max_src_len']}, target mean {real['mean_tgt_len']:.1f} "
            f"/ max {real['max_tgt_len']} tokens ({real['chosen']}). Time steps computed over "
            "real steps: " + ", ".join(f"{name} {v:.2f}x" for name, v in real["steps_over_real"].items())
            + " (the Keras example pads to the data set's longest pair, PyTorch each batch to "
            "its longest, seq2seq_jax length-sorted batches to their bucket).", "",
            "| epoch of real-length pairs | samples/s | first epoch s | RSS MiB, 3 last epochs in a row | compilations after epoch 1 |",
            "|---|---|---|---|---|"]
  for name, e in report["epoch_real"].items():
    lines.append(f"| {name} | {fmt(e['samples_per_s'])} | {fmt(e['first_epoch_s'], 1)} | "
                 f"{' '.join(fmt(x) for x in e['rss_mib_consecutive_epochs'])} | "
                 f"{e['compilations_after_first_epoch'] if name == 'seq2seq_jax' else '-'} |")
  lines += ["", "| greedy decoding, seed shapes, all steps | sentences/s |", "|---|---|"]
  for key, v in report["decode_seed_sentences_per_s"].items():
    name, batch = key.rsplit("/", 1)
    lines.append(f"| {name}, batch {batch} | {fmt(v, 1)} |")
  lines += ["", "| greedy decoding, real pairs after training | sentences/s | mean output tokens |",
            "|---|---|---|"]
  for key, v in report["decode_real"].items():
    name, batch = key.rsplit("/", 1)
    lines.append(f"| {name}, batch {batch} | {fmt(v['sentences_per_s'], 1)} | {fmt(v['mean_output_len'], 1)} |")
  if report["ratios"]:
    lines += ["", "| seq2seq_jax's rate over the peer's | ratio |", "|---|---|"]
    for name, v in report["ratios"].items():
      lines.append(f"| {name} | {v:,.2f}x |")
  for peer, why in report["skipped"].items():
    lines.append(f"\n{peer} skipped: {why}")
  return "\n".join(lines)
