"""The benchmark's report: medians, ratios and Markdown tables.

Medians over the rounds, ratios of seq2seq_jax's rates to the peers', and the Markdown
tables `seq2seq-jax benchmark` prints.
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
  if report.get("matmul_gflops_bf16") and "seq2seq_jax_bf16" in train:
    report["train_pct_of_bf16_matmul_limit"] = {"seq2seq_jax_bf16": 100.0 * train["seq2seq_jax_bf16"]
                                                * flops / (report["matmul_gflops_bf16"] * 1e9)}
  by_framework = _by_framework(samples, shapes["batch"], train)
  if set(by_framework) != {"seq2seq_jax"}:  # the scan beside cuDNN, or the peers at every batch
    report["train_by_batch"] = by_framework
  if "recurrent" in report:
    _summarise_recurrent(report["recurrent"])
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
  for peer in ("torch", "keras"):  # the larger batches, where the peers trained at them too
    for b, theirs in sorted(report.get("train_by_batch", {}).get(peer, {}).items()):
      if b != shapes["batch"]:
        ratio(f"train batch {b} vs {peer}", report["train_by_batch"]["seq2seq_jax"].get(b), theirs)
  report["peak_rss_mib_at_batch"] = {k.split("/", 1)[1]: v[0] for k, v in samples.items()
                                     if k.startswith("peak_rss_batch")}
  report["ratios"] = ratios


def _by_framework(samples, seed_batch: int, train: dict[str, float]) -> dict[str, dict[int, float]]:
  """Training samples/s by framework and batch: ours (lstm_impl auto), ours with the scan
  where auto ran cuDNN, and the peers where they trained at the larger batches."""
  out: dict[str, dict[int, float]] = {}
  for key, values in samples.items():
    parts = key.split("/")
    if parts[0] == "train_batch":
      out.setdefault("seq2seq_jax", {})[int(parts[1])] = _median(values)
    elif parts[0] == "train_batch_scan":
      out.setdefault("seq2seq_jax_scan", {})[int(parts[1])] = _median(values)
    elif parts[0] == "train_batch_peer":
      out.setdefault(parts[1], {})[int(parts[2])] = _median(values)
  for name in list(out) + ["seq2seq_jax"]:
    if name in train:
      out.setdefault(name, {})[seed_batch] = train[name]
  return {name: dict(sorted(rates.items())) for name, rates in out.items()}


def _summarise_recurrent(recurrent: dict[str, Any]) -> None:
  """Medians of the per-step times by batch and variant, the fastest scan unroll, and the
  scan's time over cuDNN's (> 1: cuDNN is faster) where cuDNN was measured."""
  by_batch: dict[int, dict[str, dict[str, float]]] = {}
  for key, runs in recurrent["samples"].items():
    batch, variant = key.split("/", 1)
    by_batch.setdefault(int(batch), {})[variant] = {
        name: _median([r[f"{name}_us_per_step"] for r in runs])
        for name in ("forward", "forward_backward")}
  recurrent["us_per_step"] = by_batch
  best = {}
  for batch, variants in by_batch.items():
    scans = {v: t for v, t in variants.items() if v.startswith("scan/")}
    unroll = min(scans, key=lambda v: scans[v]["forward_backward"])
    best[batch] = {"unroll": int(unroll.split("/")[1]), **scans[unroll]}
    if "cudnn" in variants:
      best[batch]["scan_over_cudnn"] = {
          name: scans[unroll][name] / variants["cudnn"][name] for name in ("forward", "forward_backward")}
  recurrent["fastest_scan"] = best


def format_report(report: dict[str, Any]) -> str:
  """The report as Markdown tables (what the README carries)."""
  m, s = report["machine"], report["shapes"]
  fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
  device = report.get("device", {"platform": "cpu"})
  accelerator = device["platform"] != "cpu"
  if accelerator:
    where = (f"seq2seq_jax ran on {device['count']} {device['platform'].upper()} device(s), "
             f"{device['name']}, its LSTM layers through {_impl_name(device['lstm_impl'])} "
             f"(lstm_impl=auto), JAX's default matmul precision "
             f"{device['default_matmul_precision'] or 'unset (float32 may round to TF32)'}; "
             + "; ".join(f"{name} on {_peer_device(info)}" for name, info in device["peers"].items())
             + ".")
    limit = (f"measured matmul limit {report['matmul_limit_gflops']:,.0f} GFLOP/s (float32, "
             f"{report.get('matmul_n', 4096)} x {report.get('matmul_n', 4096)}, highest precision; "
             f"bfloat16 {fmt(report.get('matmul_gflops_bf16'))}, float32 at JAX's default precision "
             f"{fmt(report.get('matmul_gflops_default_precision'))} GFLOP/s).")
  else:
    where = (f"seq2seq_jax ran on {report['seq2seq_jax_devices']['devices']} XLA CPU device(s), as "
             "`seq2seq-jax train` does on this machine (XLA_FLAGS "
             f"`{report['seq2seq_jax_devices']['xla_flags'] or 'none'}`); Keras and PyTorch as their "
             "users run them, one process with every core.")
    limit = f"measured matmul limit {report['matmul_limit_gflops']:.0f} GFLOP/s."
  lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; allocator {m['allocator']}; "
           + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
           + f". Medians of {report['rounds']} alternating rounds.", "", where, "",
           f"Seed shapes: batch {s['batch']}, source {s['src_len']} x {s['src_vocab']}, target "
           f"{s['tgt_len']} x {s['tgt_vocab']}, LSTM {s['latent']}; "
           f"{report['train_flops_per_sample'] / 1e6:.0f} MFLOP per training sample; {limit}", "",
           f"| training (seed shapes) | samples/s | % of matmul limit | compile s | peak RSS MiB at batch {s['batch']} |",
           "|---|---|---|---|---|"]
  train = report["train_samples_per_s"]
  for key, label in (("seq2seq_jax", "seq2seq_jax train step"),
                     ("seq2seq_jax_scan", "seq2seq_jax train step, lstm_impl=scan"),
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
  if "train_pct_of_bf16_matmul_limit" in report:
    lines.append("The bfloat16 row is {:.1f}% of the measured bfloat16 matmul rate.".format(
        report["train_pct_of_bf16_matmul_limit"]["seq2seq_jax_bf16"]))
  if "device_peak_mib" in report:
    lines.append("Peak device memory: " + ", ".join(
        f"{name} {fmt(v)} MiB" for name, v in report["device_peak_mib"].items()) + ".")
  if "train_by_batch" in report:
    names = list(report["train_by_batch"])
    batches = sorted({b for rates in report["train_by_batch"].values() for b in rates}, key=int)
    lines += ["", "| training samples/s by batch size | " + " | ".join(names)
              + " | seq2seq_jax % of matmul limit |", "|---" * (len(names) + 2) + "|"]
    for b in batches:
      ours = report["seq2seq_jax_by_batch"].get(b, {}).get("pct_of_matmul_limit")
      lines.append(f"| batch {b} | " + " | ".join(fmt(report["train_by_batch"][n].get(b)) for n in names)
                   + f" | {fmt(ours, 1)} |")
  else:
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
  if "recurrent" in report:
    lines += _recurrent_lines(report["recurrent"], s, fmt)
  if report["ratios"]:
    lines += ["", "| seq2seq_jax's rate over the peer's | ratio |", "|---|---|"]
    for name, v in report["ratios"].items():
      lines.append(f"| {name} | {v:,.2f}x |")
  for peer, why in report["skipped"].items():
    lines.append(f"\n{peer} skipped: {why}")
  return "\n".join(lines)


def _impl_name(impl: str) -> str:
  return {"cudnn": "cuDNN (jax.experimental.rnn.lstm)", "scan": "lax.scan"}.get(impl, impl)


def _peer_device(info: dict[str, Any]) -> str:
  """Where a peer ran, from its setup answer."""
  if info.get("platform") == "cuda":
    return (f"{info['name']} (cuDNN {info.get('cudnn')}, cudnn.allow_tf32 {info.get('cudnn_allow_tf32')}, "
            f"matmul allow_tf32 {info.get('matmul_allow_tf32')})")
  return info.get("platform", "?")


def _recurrent_lines(recurrent: dict[str, Any], shapes: dict[str, int], fmt) -> list[str]:
  """One table per batch: microseconds per time step of one LSTM layer, by implementation."""
  lines = []
  for batch, variants in recurrent["us_per_step"].items():
    lines += ["", f"| one LSTM layer, batch {batch}, {recurrent['steps']} steps, LSTM "
              f"{recurrent['latent']} (input {recurrent['latent']}) | forward us/step | "
              "forward + backward us/step |", "|---|---|---|"]
    for variant, times in variants.items():
      label = (f"lax.scan (lstm_sequence), unroll {variant.split('/')[1]}" if variant.startswith("scan/")
               else _impl_name(variant))
      lines.append(f"| {label} | {fmt(times['forward'], 1)} | {fmt(times['forward_backward'], 1)} |")
    best = recurrent["fastest_scan"][batch]
    line = f"Fastest scan unroll at batch {batch}: {best['unroll']}"
    if "scan_over_cudnn" in best:
      over = best["scan_over_cudnn"]
      line += (f"; its time over cuDNN's: {over['forward']:.2f}x forward, "
               f"{over['forward_backward']:.2f}x forward + backward")
    else:
      line += f"; cuDNN {recurrent['cudnn']}"
    lines += ["", line + "."]
  return lines
