"""`semipd make-model`: build a random-weight Llama model offline (engine/random_model.py)."""

from __future__ import annotations

import json

HELP = "build a random-weight Llama model (Hugging Face format) offline"


def add_arguments(parser) -> None:
    from engine.random_model import PRESETS, preset_names

    parser.description = (
        "Build a Llama-architecture model with random weights and a locally trained byte-level "
        "BPE tokenizer, fully offline. The same preset and seed give byte-identical weights. "
        "Presets: " + "; ".join(
            f"{n}: hidden {p.hidden_size}, {p.num_hidden_layers} layers, vocab {p.vocab_size}"
            for n, p in sorted(PRESETS.items()))
    )
    parser.add_argument("--preset", choices=preset_names(), default="tiny",
                        help="model size (default tiny)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the model into")


def run(args, passthrough=()) -> int:
    from engine.random_model import make_model

    out = make_model(args.preset, args.out_dir, args.seed)
    info = json.loads((out / "semipd_model.json").read_text())
    print(f"wrote {args.preset} model ({info['parameters'] / 1e6:.1f} M parameters, seed {args.seed}) to {out}")
    return 0
