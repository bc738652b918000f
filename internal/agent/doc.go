// Package agent holds the livetrace agent: a freestanding blob of C and
// assembly that the tracer maps into the target process, its generated
// memory layout, and the Go side of the shared-memory protocol.
package agent

//go:generate go run ./gen -src csrc -out .
