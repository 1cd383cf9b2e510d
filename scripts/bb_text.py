"""Write Bigram-Backcopy sequences as text documents (a .jsonl file, one sequence per line), for pretraining
on BB data alone or mixed with prose: `toybb pretrain --text bb.jsonl,pride ...`, the positive control of
the emergence experiment (figures/README.md). The sequences are the toy task's own sampler (BBTask, its
default table and triggers), BOS dropped, decoded to characters.

    python scripts/bb_text.py --out bb.jsonl --docs 8000 --len 63 --seed 0
"""

import argparse
import json

import jax

from toybb.task import BBTask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the .jsonl file to write")
    p.add_argument("--docs", type=int, default=8000, help="number of sequences")
    p.add_argument("--len", type=int, default=63, help="characters per sequence")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    task = BBTask()
    seqs = task.sample(jax.random.key(a.seed), a.docs, a.len)[:, 1:]  # drop the BOS
    with open(a.out, "w", encoding="utf-8") as f:
        for s in seqs:
            f.write(json.dumps({"text": task.decode(s)}) + "\n")
    print(f"wrote {a.docs} BB sequences of {a.len} characters to {a.out} (triggers {task.decode(task.triggers)!r})")


if __name__ == "__main__":
    main()
