package raftstore

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	h := newHCLog(l).Named("raft").With("peer", "r1").Named("transport")

	h.Debug("dropped")
	h.Trace("dropped")
	h.Info("kept", "n", 1)
	h.Warn("warned")
	h.Error("failed", "error", "boom")
	h.Log(hclog.Off, "dropped")
	h.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}).Print("from log")

	want := strings.Join([]string{
		`level=INFO msg=kept peer=r1 subsystem=raft.transport n=1`,
		`level=WARN msg=warned peer=r1 subsystem=raft.transport`,
		`level=ERROR msg=failed peer=r1 subsystem=raft.transport error=boom`,
		`level=WARN msg="from log" peer=r1`,
		``,
	}, "\n")
	if got := buf.String(); got != want {
		t.Errorf("logged\n%s\nwant\n%s", got, want)
	}
	if h.IsDebug() || !h.IsInfo() || h.GetLevel() != hclog.Info || h.Name() != "raft.transport" {
		t.Errorf("levels: debug %v info %v level %v name %q", h.IsDebug(), h.IsInfo(), h.GetLevel(), h.Name())
	}
	if args := h.ImpliedArgs(); len(args) != 2 {
		t.Errorf("implied args %v", args)
	}
}
