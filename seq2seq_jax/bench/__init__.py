"""The `seq2seq-jax benchmark` harness, outside the core package.

seq2seq_jax against Keras 3 (JAX backend) and PyTorch on the same work, measured side by
side.

  harness.py     the coordinator: worker processes, alternating rounds, run_benchmark
  workers.py     one worker per framework, each in its own process (python -m ...workers)
  work.py        the work: the Keras example's shapes, the real-length pairs (--data)
  report.py      medians, ratios against the peers, the Markdown tables
  torch_peer.py  all PyTorch calls: the example's model in nn.LSTM

Nothing in the core package imports it; `seq2seq-jax benchmark` (cli.py) does, lazily.
"""
