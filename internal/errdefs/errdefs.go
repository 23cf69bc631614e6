// Package errdefs holds Baton's error classes and their mapping to gRPC
// codes. Code inside Baton wraps one of the sentinels
// (fmt.Errorf("deploy %s: %w", name, errdefs.ErrInvalid)); only the edges
// (gRPC servers and clients) translate them to and from wire codes.
package errdefs

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The classes.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInvalid     = errors.New("invalid argument")
	ErrUnavailable = errors.New("unavailable")
)

// ToGRPC turns an error into a gRPC status error with the code of its class.
// The message is the error's full text.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

// FromGRPC turns a gRPC status error back into an error of its class, with
// the server's message as its text.
func FromGRPC(err error) error {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return err
	}
	var class error
	switch st.Code() {
	case codes.NotFound:
		class = ErrNotFound
	case codes.AlreadyExists:
		class = ErrExists
	case codes.InvalidArgument:
		class = ErrInvalid
	case codes.Unavailable:
		class = ErrUnavailable
	default:
		return errors.New(st.Message())
	}
	return &wireError{msg: st.Message(), class: class}
}

type wireError struct {
	msg   string
	class error
}

func (e *wireError) Error() string { return e.msg }
func (e *wireError) Unwrap() error { return e.class }
