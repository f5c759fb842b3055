"""The first synthesiser (v1), frozen: the MediaPipe template face on a procedural head, one albedo.

Kept only to reproduce the data the shipped checkpoints were trained on (``gen_synthetic.py --world v1``,
see the README's "Training the shipped checkpoints"); everything else uses v2 (:mod:`mvfr.synthesis`).
Its scans carry the template's uvs (s/t) and it writes no ``RAW/region`` files.
"""
