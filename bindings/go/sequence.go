package nexusquant

// #include "shim.h"
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
)

// Sequence is a growing (layer, sequence): the prefill compressed once, later chunks
// appended as new blocks. Append is serialised by the Sequence itself (the library
// forbids concurrent appends); reads and decodes may run from many goroutines at once.
// The context must stay open while the sequence is: Context.Close waits for it.
type Sequence struct {
	mu     sync.RWMutex // written by Append and Close, read-held by the rest
	ptr    *C.nq_sequence
	closed bool
	ctx    *Context
}

// NewSequence creates an empty sequence of one layer.
func (c *Context) NewSequence(layer uint32) (*Sequence, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	var p *C.nq_sequence
	if err := call(func() C.nq_status { return C.nq_sequence_create(c.ptr, C.uint32_t(layer), &p) }); err != nil {
		return nil, err
	}
	c.seqs++
	s := &Sequence{ptr: p, ctx: c}
	runtime.SetFinalizer(s, (*Sequence).Close)
	return s, nil
}

func (s *Sequence) acquire() (*C.nq_sequence, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, errClosed
	}
	return s.ptr, nil
}

// Close frees the sequence and every block in it (borrowed Blocks become invalid).
func (s *Sequence) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	C.nq_sequence_free(s.ptr)
	s.ptr = nil
	s.mu.Unlock()
	runtime.SetFinalizer(s, nil)
	c := s.ctx
	c.mu.Lock()
	c.seqs--
	c.freeIfUnused()
	c.mu.Unlock()
	return nil
}

// Append compresses in (its Layer is ignored: the sequence's is used) and appends it.
// Positions must continue after the last appended one.
func (s *Sequence) Append(in *Input) error { return s.AppendWithScores(in, nil) }

// AppendWithScores is Append with importance scores (nil = key norms).
func (s *Sequence) AppendWithScores(in *Input, sc *Scores) error {
	s.mu.Lock() // one append at a time, and no reads meanwhile
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	_, _, err := s.ctx.compress(s.ptr, false, in, sc)
	return err
}

// AppendBlock appends an existing block, which the sequence takes over: on success b
// becomes a borrowed Block of the sequence. On failure b is unchanged.
func (s *Sequence) AppendBlock(b *Block) error {
	if b.owner != nil {
		return invalid("the block already belongs to a sequence")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errClosed
	}
	if err := call(func() C.nq_status { return C.nq_sequence_append_block(s.ptr, b.ptr) }); err != nil {
		return err
	}
	b.owner = s
	runtime.SetFinalizer(b, nil)
	return nil
}

// NumBlocks is the number of blocks appended so far.
func (s *Sequence) NumBlocks() int {
	p, err := s.acquire()
	if err != nil {
		return 0
	}
	defer s.mu.RUnlock()
	return int(C.nq_sequence_num_blocks(p))
}

// Block returns block i, borrowed: valid until the sequence is closed.
func (s *Sequence) Block(i int) (*Block, error) {
	p, err := s.acquire()
	if err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	if i < 0 {
		return nil, &Error{Status: ErrOutOfRange, Message: "negative block index"}
	}
	b := C.nq_sequence_block(p, C.size_t(i))
	if b == nil {
		return nil, &Error{Status: ErrOutOfRange, Message: "block index past the sequence's blocks"}
	}
	return &Block{ptr: (*C.nq_block)(unsafe.Pointer(b)), owner: s}, nil
}

// Totals are the kept tokens per head, resident bytes and original fp16 bytes.
func (s *Sequence) Totals() (tokens, residentBytes, originalBytes uint64, err error) {
	p, err := s.acquire()
	if err != nil {
		return 0, 0, 0, err
	}
	defer s.mu.RUnlock()
	var t, r, o C.uint64_t
	err = call(func() C.nq_status { return C.nq_sequence_totals(p, &t, &r, &o) })
	return uint64(t), uint64(r), uint64(o), err
}

// Decode writes tokens [begin, end) of the whole sequence (across blocks) into out.
func (s *Sequence) Decode(begin, end int, out *Output) error {
	if begin < 0 || end < begin || end > math32 {
		return &Error{Status: ErrOutOfRange, Message: "bad token range"}
	}
	c := s.ctx
	d, err := out.desc(c.heads, c.headDim, end-begin)
	if err != nil {
		return err
	}
	p, err := s.acquire()
	if err != nil {
		return err
	}
	defer s.mu.RUnlock()
	err = call(func() C.nq_status {
		return C.nqgo_decode(nil, nil, p, C.uint32_t(begin), C.uint32_t(end), d.kv, d.k, d.v, d.kpt, d.vpt)
	})
	runtime.KeepAlive(out)
	return err
}

// DecodeFloat32 decodes every token as float32 [heads][tokens][head_dim] K and V.
func (s *Sequence) DecodeFloat32() (k, v []float32, err error) {
	t, _, _, err := s.Totals()
	if err != nil {
		return nil, nil, err
	}
	n := s.ctx.heads * int(t) * s.ctx.headDim
	k, v = make([]float32, n), make([]float32, n)
	err = s.Decode(0, int(t), &Output{K: Float32(k), V: Float32(v)})
	return k, v, err
}

// Positions are the original positions of tokens [begin, end) of one head.
func (s *Sequence) Positions(head uint32, begin, end int) ([]int64, error) {
	if begin < 0 || end < begin || end > math32 {
		return nil, &Error{Status: ErrOutOfRange, Message: "bad token range"}
	}
	p, err := s.acquire()
	if err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	out := make([]int64, end-begin+1)
	err = call(func() C.nq_status {
		return C.nq_sequence_positions(p, C.uint32_t(head), C.uint32_t(begin), C.uint32_t(end),
			(*C.int64_t)(unsafe.Pointer(&out[0])))
	})
	return out[:end-begin], err
}
