"""Compressed KV between processes: blocks and sequences over torch.distributed.

    from nexusquant.distributed import send_blocks, recv_blocks
    send_blocks(blocks, dst=1, form="archive")          # rank 0 (gloo: hosts / CPUs)
    blocks, stats = recv_blocks(ctx, src=0)             # rank 1: verified, then built

`form="resident"` sends the images as they live in memory (NCCL between GPUs);
`form="archive"` sends the zstd archive form (the fewest bytes, for slower links).
Every transfer carries XXH3-64 digests that are checked before anything is decoded;
a failing transfer raises TransferCorrupt. `python -m nexusquant.distributed --demo`
runs a prefill-to-decode handoff of a Llama-3-8B-shaped cache (see --help).
"""
from .frames import TransferCorrupt, pack, parse_envelope, unpack
from .images import block_from_image, copy_block, host_image, stored_archive
from .transport import (TransferStats, recv_blocks, recv_sequence, recv_transfer, send_blocks, send_sequence,
                        sequence_blocks)

__all__ = ["TransferCorrupt", "TransferStats", "send_blocks", "recv_blocks", "send_sequence", "recv_sequence",
           "recv_transfer", "sequence_blocks", "block_from_image", "stored_archive", "host_image", "copy_block",
           "pack", "unpack", "parse_envelope"]
