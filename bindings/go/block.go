package nexusquant

// #include <nexusquant.h>
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
)

// Block is one compressed (layer, sequence, chunk). Blocks are immutable: one may be
// read and decoded from many goroutines at once. A Block from Compress or Deserialize
// is owned: Close frees it (a finalizer does if nobody does). A Block from
// Sequence.Block is borrowed: it stays valid until the sequence is closed, and its
// Close does nothing.
type Block struct {
	mu     sync.RWMutex
	ptr    *C.nq_block
	closed bool
	owner  *Sequence // non-nil for a borrowed block
}

func newBlock(p *C.nq_block) *Block {
	b := &Block{ptr: p}
	runtime.SetFinalizer(b, (*Block).Close)
	return b
}

// acquire read-locks the block (or, when borrowed, its sequence) for one call.
func (b *Block) acquire() (*C.nq_block, error) {
	if b.owner != nil {
		if _, err := b.owner.acquire(); err != nil {
			return nil, err
		}
		return b.ptr, nil
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return nil, errClosed
	}
	return b.ptr, nil
}

func (b *Block) release() {
	if b.owner != nil {
		b.owner.mu.RUnlock()
		return
	}
	b.mu.RUnlock()
}

// Close frees an owned block; later calls on it fail.
func (b *Block) Close() error {
	if b.owner != nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		C.nq_block_free(b.ptr)
		b.ptr = nil
		runtime.SetFinalizer(b, nil)
	}
	return nil
}

// BlockInfo is what nq_block_get_info reports.
type BlockInfo struct {
	Layer, NumHeads, HeadDim     uint32
	TokensIn, TokensKept         uint32
	KBits, VBits                 uint32
	Codec                        Codec
	EvictMode                    EvictMode
	RopeMode                     RopeMode
	FP16Sinks, FP16Window        uint32
	PositionsPerHead             bool
	FirstPosition, LastPosition  int64
	OriginalBytes, ResidentBytes uint64
	Ratio                        float64
	HeaderBytes, PositionBytes   uint64
	ScaleBytes, CodeBytes        uint64
	FP16Bytes, PaddingBytes      uint64
	KeyMeanBytes                 uint64 // the k_mean section (key centering); 0 without it
}

func (b *Block) Info() (BlockInfo, error) {
	p, err := b.acquire()
	if err != nil {
		return BlockInfo{}, err
	}
	defer b.release()
	var i C.nq_block_info
	i.size = C.size_t(unsafe.Sizeof(i))
	if err := call(func() C.nq_status { return C.nq_block_get_info(p, &i) }); err != nil {
		return BlockInfo{}, err
	}
	return BlockInfo{
		Layer: uint32(i.layer), NumHeads: uint32(i.num_heads), HeadDim: uint32(i.head_dim),
		TokensIn: uint32(i.tokens_in), TokensKept: uint32(i.tokens_kept),
		KBits: uint32(i.k_bits), VBits: uint32(i.v_bits),
		Codec: Codec(i.codec), EvictMode: EvictMode(i.evict_mode), RopeMode: RopeMode(i.rope_mode),
		FP16Sinks: uint32(i.fp16_sinks), FP16Window: uint32(i.fp16_window),
		PositionsPerHead: i.positions_per_head != 0,
		FirstPosition:    int64(i.first_position), LastPosition: int64(i.last_position),
		OriginalBytes: uint64(i.original_bytes), ResidentBytes: uint64(i.resident_bytes), Ratio: float64(i.ratio),
		HeaderBytes: uint64(i.header_bytes), PositionBytes: uint64(i.position_bytes),
		ScaleBytes: uint64(i.scale_bytes), CodeBytes: uint64(i.code_bytes),
		FP16Bytes: uint64(i.fp16_bytes), PaddingBytes: uint64(i.padding_bytes),
		KeyMeanBytes: uint64(i.key_mean_bytes),
	}, nil
}

// Positions are the original positions of kept tokens [begin, end) of one head.
func (b *Block) Positions(head uint32, begin, end int) ([]int64, error) {
	if begin < 0 || end < begin || end > math32 {
		return nil, &Error{Status: ErrOutOfRange, Message: "bad token range"}
	}
	p, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.release()
	out := make([]int64, end-begin+1) // +1: a valid address even for an empty range
	err = call(func() C.nq_status {
		return C.nq_block_positions(p, C.uint32_t(head), C.uint32_t(begin), C.uint32_t(end),
			(*C.int64_t)(unsafe.Pointer(&out[0])))
	})
	return out[:end-begin], err
}

// Data is a copy of the block's resident bytes.
func (b *Block) Data() ([]byte, error) {
	p, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.release()
	var data unsafe.Pointer
	var n C.size_t
	if err := call(func() C.nq_status { return C.nq_block_data(p, &data, &n) }); err != nil {
		return nil, err
	}
	return C.GoBytes(data, C.int(n)), nil
}

// Digest is the XXH3-64 of the resident bytes: equal digests mean identical blocks.
func (b *Block) Digest() (uint64, error) {
	p, err := b.acquire()
	if err != nil {
		return 0, err
	}
	defer b.release()
	var d C.uint64_t
	err = call(func() C.nq_status { return C.nq_block_digest(p, &d) })
	return uint64(d), err
}
