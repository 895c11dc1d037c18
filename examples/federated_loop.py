"""Federate an existing PyTorch training loop with a few lines (training.inprocess.session).

Three "clouds" each hold one Shakespeare play; every round each cloud runs its own unchanged training loop
inside ``with fed.client(i).round(model) as r:``; the updates are combined by secure aggregation (CKKS by
default), so the server only ever decrypts the weighted sum. Run:

    .venv/bin/python examples/federated_loop.py [--scheme masking|packed] [--aggregator loss-weighted]
"""

from __future__ import annotations

import argparse

import torch

from training.workload.text import encode_documents, lm_blocks, load_shakespeare, train_tokenizer
from training.workload.trainer import ModelSpec, build_model, evaluate
from training.inprocess.session import FederatedSession


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scheme", default="ckks", choices=["ckks", "masking", "packed"])
    ap.add_argument("--aggregator", default="fedavg", choices=["fedavg", "loss-weighted", "gradient", "async"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread

    plays = load_shakespeare(["hamlet", "macbeth", "the-tempest"])
    tok = train_tokenizer(list(plays.values()), vocab_size=1024)
    blocks = {name: lm_blocks(ids, 32) for name, ids in encode_documents(tok, plays).items()}
    data = [torch.from_numpy(b[:160]) for b in blocks.values()]            # each cloud's private data
    val = next(iter(blocks.values()))[-32:]

    model = build_model(ModelSpec(vocab_size=tok.get_vocab_size(), block_size=32))
    fed = FederatedSession(model, clients=3, scheme=args.scheme, aggregator=args.aggregator, update_clip=1.0)
    print(f"initial validation loss {evaluate(model, val):.3f}")

    for rnd in range(args.rounds):
        for i in range(3):
            with fed.client(i).round(model) as r:
                # ---- the user's unchanged training loop ----
                opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
                for batch in data[i].split(16):
                    loss = model(input_ids=batch, labels=batch).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                # ---------------------------------------------
                r.report(num_samples=len(data[i]), loss=loss.item())
        fed.load_global(model)
        rep = fed.reports[-1]
        print(f"round {rnd + 1}: validation loss {evaluate(model, val):.3f}, "
              f"bytes up {rep.total_up:,}, down {rep.total_down:,}")


if __name__ == "__main__":
    main()
