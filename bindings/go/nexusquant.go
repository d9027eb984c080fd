// Package nexusquant binds libnexusquant, the KV-cache compression library, through cgo.
//
// A Context holds a validated configuration and may be used from many goroutines at
// once; Compress turns one layer's keys and values (Go slices with a shape and a
// layout) into a Block of real bytes; Decode writes them back into Go slices;
// Serialize/Deserialize give the checksummed archive form; a Sequence grows by
// appending chunks. Handles are freed by Close, with a finalizer as a backstop.
//
// Errors are *Error values carrying the library's Status and message; errors.Is(err,
// nexusquant.ErrCorrupt) tests the status. Go memory passed to the library is only read
// or written during the call and never kept by it.
package nexusquant

/*
#cgo pkg-config: nexusquant
#include "shim.h"

*/
import "C"

import (
	"runtime"
	"strings"
)

// Status is the library's nq_status. The non-zero values are also errors, so that
// errors.Is(err, ErrCorrupt) tests the status of an *Error.
type Status int

const (
	OK                    Status = C.NQ_OK
	ErrInvalidArgument    Status = C.NQ_ERR_INVALID_ARGUMENT
	ErrUnsupported        Status = C.NQ_ERR_UNSUPPORTED
	ErrOutOfMemory        Status = C.NQ_ERR_OUT_OF_MEMORY
	ErrBufferTooSmall     Status = C.NQ_ERR_BUFFER_TOO_SMALL
	ErrCorrupt            Status = C.NQ_ERR_CORRUPT
	ErrTruncated          Status = C.NQ_ERR_TRUNCATED
	ErrVersion            Status = C.NQ_ERR_VERSION
	ErrBackendUnavailable Status = C.NQ_ERR_BACKEND_UNAVAILABLE
	ErrDevice             Status = C.NQ_ERR_DEVICE
	ErrOutOfRange         Status = C.NQ_ERR_OUT_OF_RANGE
	ErrInternal           Status = C.NQ_ERR_INTERNAL
)

// String is the library's name of the status, e.g. "NQ_ERR_CORRUPT".
func (s Status) String() string {
	full := C.GoString(C.nq_status_string(C.nq_status(s)))
	if i := strings.IndexByte(full, ':'); i >= 0 {
		return full[:i]
	}
	return full
}

// Error makes a Status usable as a sentinel for errors.Is.
func (s Status) Error() string { return s.String() }

// Error is a failed call: the status and the library's message naming the argument or
// field at fault. Errors found by this package before calling the library (a slice too
// short for its shape) have ErrInvalidArgument and a message of their own.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return e.Status.String() + ": " + e.Message }

// Is reports whether target is this error's Status.
func (e *Error) Is(target error) bool {
	s, ok := target.(Status)
	return ok && s == e.Status
}

func invalid(msg string) error { return &Error{Status: ErrInvalidArgument, Message: msg} }

// call runs one library call and, when it fails, reads nq_last_error() on the same OS
// thread (the message is per thread and goroutines move between threads).
func call(f func() C.nq_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.NQ_OK {
		return nil
	}
	return &Error{Status: Status(st), Message: C.GoString(C.nq_last_error())}
}

// VersionNumber is the run-time library's MAJOR*10000 + MINOR*100 + PATCH.
func VersionNumber() uint32 { return uint32(C.nq_version_number()) }

// Version is the run-time library's "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.nq_version_string()) }

// HeaderVersionNumber is the version of the header this package was compiled with.
const HeaderVersionNumber = C.NQ_VERSION_NUMBER

// KVCacheBytes is 2 (K and V) x layers x kvHeads x headDim x tokens x bytesPerElement.
func KVCacheBytes(layers, kvHeads, headDim, tokens, bytesPerElement uint64) uint64 {
	return uint64(C.nq_kv_cache_bytes(C.uint64_t(layers), C.uint64_t(kvHeads), C.uint64_t(headDim),
		C.uint64_t(tokens), C.uint64_t(bytesPerElement)))
}
