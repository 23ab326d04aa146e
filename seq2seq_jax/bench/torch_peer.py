"""PyTorch peer for the benchmark: the Keras example's model in plain `nn.LSTM`.

The only module that imports torch. The model is what a PyTorch user would write for
the example: one-hot inputs into an `nn.LSTM` encoder whose final (h, c) starts an
`nn.LSTM` decoder, a Linear output layer, cross-entropy, RMSprop with Keras' settings. It
runs on the first CUDA GPU when PyTorch has one (`nn.LSTM` then calls cuDNN), else on the
CPU, with PyTorch's default precision settings either way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchSeq2Seq(nn.Module):
  def __init__(self, src_vocab: int, tgt_vocab: int, latent: int):
    super().__init__()
    self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
    self.encoder = nn.LSTM(src_vocab, latent, batch_first=True)
    self.decoder = nn.LSTM(tgt_vocab, latent, batch_first=True)
    self.output = nn.Linear(latent, tgt_vocab)

  def forward(self, src_BxS: torch.Tensor, tgt_in_BxT: torch.Tensor) -> torch.Tensor:
    _, state = self.encoder(nn.functional.one_hot(src_BxS, self.src_vocab).float())
    out_BxTxH, _ = self.decoder(nn.functional.one_hot(tgt_in_BxT, self.tgt_vocab).float(), state)
    return self.output(out_BxTxH)


def device() -> torch.device:
  """The first CUDA GPU when PyTorch has one, else the CPU."""
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device() -> dict:
  """{"platform": "cuda" | "cpu", "name", and on a GPU the precision flags that apply}."""
  where = device()
  if where.type != "cuda":
    return {"platform": "cpu", "name": "cpu"}
  return {"platform": "cuda", "name": torch.cuda.get_device_name(where),
          "cudnn": torch.backends.cudnn.version(),
          "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
          "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def synchronize() -> None:
  """Waits for the GPU's queued work (nothing to wait for on a CPU)."""
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def peak_device_mib() -> float | None:
  return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def _tensor(x: np.ndarray, model) -> torch.Tensor:
  return torch.from_numpy(x).long().to(next(model.parameters()).device)


def build(src_vocab: int, tgt_vocab: int, latent: int, seed: int = 0):
  """The model and its optimizer (Keras 3 RMSprop: lr 1e-3, rho 0.9, eps 1e-7), on device()."""
  torch.manual_seed(seed)
  model = TorchSeq2Seq(src_vocab, tgt_vocab, latent).to(device())
  optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
  return model, optimizer


def train_step(model, optimizer, src_BxS: np.ndarray, tgt_in_BxT: np.ndarray,
               tgt_out_BxT: np.ndarray, ignore_index: int = -100) -> float:
  """One teacher-forced step; target positions equal to ignore_index do not count."""
  logits_BxTxV = model(_tensor(src_BxS, model), _tensor(tgt_in_BxT, model))
  loss = nn.functional.cross_entropy(logits_BxTxV.reshape(-1, logits_BxTxV.shape[-1]),
                                     _tensor(tgt_out_BxT, model).reshape(-1),
                                     ignore_index=ignore_index)
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
  return float(loss.detach())


@torch.no_grad()
def greedy_decode(model, src_BxS: np.ndarray, start_id: int, end_id: int, max_len: int) -> np.ndarray:
  """Batched argmax decoding, one decoder step per output token, stopping once every
  row has produced end_id: ids_BxL."""
  src = _tensor(src_BxS, model)
  _, state = model.encoder(nn.functional.one_hot(src, model.src_vocab).float())
  prev_B = torch.full((src.shape[0],), start_id, dtype=torch.long, device=src.device)
  done_B = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
  out = []
  for _ in range(max_len):
    x = nn.functional.one_hot(prev_B, model.tgt_vocab).float()[:, None, :]
    h_Bx1xH, state = model.decoder(x, state)
    prev_B = model.output(h_Bx1xH[:, 0]).argmax(-1)
    out.append(prev_B)
    done_B |= prev_B == end_id
    if bool(done_B.all()):
      break
  return torch.stack(out, 1).cpu().numpy()


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
  """Best f32 n x n matmul rate over a few timed runs, on device()."""
  import time
  where = device()
  a, b = torch.randn(n, n, device=where), torch.randn(n, n, device=where)
  if where.type == "cuda":  # the first call loads cuBLAS
    torch.mm(a, b)
    synchronize()
  best = 0.0
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(repeats):
      torch.mm(a, b)
    synchronize()
    best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9)
  return best
