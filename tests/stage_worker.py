"""One stage of a distributed run, as a launcher would start it (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT in the environment): runs a forward and generate through
litcore.distributed and writes what it saw. Used by tests/test_distributed.py."""
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM
import transformers.generation.utils  # noqa: F401  imports are not the stage's footprint
import transformers.models.llama.modeling_llama  # noqa: F401
import torch.distributed.distributed_c10d  # noqa: F401

import litcore.distributed
import own_cgroup  # this file's folder is on the path: it runs as a script from there


def cgroup_dir():
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if "memory" in controllers.split(","):
            return "/sys/fs/cgroup/memory" + path
    return None


def read(name):
    group = cgroup_dir()
    return int(open(os.path.join(group, name)).read().split()[0]) if group else 0


def main():
    args = json.loads(sys.argv[1])
    config = LlamaConfig(**args["config"])
    rank = int(os.environ["RANK"])
    ids = torch.tensor(args["ids"])
    torch.ones(64, 64) @ torch.ones(64, 64)  # kernels loaded before the measurement
    if cgroup_dir():
        open(os.path.join(cgroup_dir(), "memory.max_usage_in_bytes"), "w").write("0")
    before = read("memory.usage_in_bytes")
    stat_before = own_cgroup.stat() if cgroup_dir() else {}
    budget = args["budgets"][rank] if args.get("budgets") else "auto"
    stage = litcore.distributed.from_params(args["path"], lambda: LlamaForCausalLM(config), memory_budget=budget,
                                            split=args.get("split"), timeout=args.get("timeout", 60))
    logits = stage(ids).logits
    if args.get("die") == rank:
        os._exit(3)  # a stage that dies mid-run
    tokens = stage.generate(ids, max_new_tokens=args["new_tokens"], min_new_tokens=args["new_tokens"],
                            do_sample=False, pad_token_id=0)
    torch.save({"logits": logits, "tokens": tokens}, os.path.join(args["out"], f"rank{rank}.pt"))
    stats = stage.stats()
    after = own_cgroup.stat() if stat_before else {}
    grown = {k: (after[k] - stat_before[k]) >> 20 for k in ("rss", "cache", "mapped_file") if k in after}
    print(json.dumps({"rank": rank, "before": before, "peak": read("memory.max_usage_in_bytes"),
                      "failcnt": read("memory.failcnt"), "stage_bytes": stage.stage.nbytes,
                      "modules": stage.stage.modules, "streams": stage.plan.streams,
                      "bytes_sent": stats["bytes_sent"], "bytes_received": stats["bytes_received"],
                      "grown_mib": grown}))
    stage.close()


if __name__ == "__main__":
    main()
