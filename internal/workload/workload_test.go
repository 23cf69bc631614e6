package workload

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestHealth(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler("m1").ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
		t.Fatalf("GET /health = %d %q, want 200 \"ok\"", rec.Code, rec.Body.String())
	}
}

func TestWorkloads(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		workload string // "-" means no header
		cpuMS    string
		min, max time.Duration
	}{
		{"empty", "empty", "200", 0, 50 * time.Millisecond},
		{"empty by substring", "trace-empty-func", "200", 0, 50 * time.Millisecond},
		{"sleep", "sleep", "60", 60 * time.Millisecond, time.Second},
		{"trace spins", "trace", "40", 40 * time.Millisecond, time.Second},
		{"image name spins", "docker.io/cvetkovic/dirigent_trace_function:latest", "30", 30 * time.Millisecond, time.Second},
		{"no header spins", "-", "30", 30 * time.Millisecond, time.Second},
		{"no requested_cpu", "trace", "", 0, 50 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.workload != "-" {
				req.Header.Set("workload", tc.workload)
			}
			req.Header.Set("function", "fn-7")
			if tc.cpuMS != "" {
				req.Header.Set("requested_cpu", tc.cpuMS)
			}
			req.Header.Set("multiplier", "3")
			rec := httptest.NewRecorder()
			start := time.Now()
			Handler("machine-a").ServeHTTP(rec, req)
			took := time.Since(start)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d, body %q", rec.Code, rec.Body.String())
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			body := rec.Body.String()
			if !regexp.MustCompile(`^\{"Status":"OK","Function":"fn-7","MachineName":"machine-a","ExecutionTime":\d+\}$`).MatchString(body) {
				t.Fatalf("body %q does not have the protocol's exact shape", body)
			}
			var resp Response
			if err := json.Unmarshal([]byte(body), &resp); err != nil {
				t.Fatal(err)
			}
			exec := time.Duration(resp.ExecutionTime) * time.Microsecond
			if exec < tc.min || exec > tc.max {
				t.Errorf("ExecutionTime %v, want within [%v, %v]", exec, tc.min, tc.max)
			}
			if took < exec {
				t.Errorf("handler took %v but reported %v", took, exec)
			}
		})
	}
}

func TestBadRequestedCPU(t *testing.T) {
	for _, v := range []string{"abc", "-5", "1.5"} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("requested_cpu", v)
		rec := httptest.NewRecorder()
		Handler("m").ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "requested_cpu") {
			t.Errorf("requested_cpu %q: got %d %q, want 400 naming the header", v, rec.Code, rec.Body.String())
		}
	}
}

func TestOverHTTP(t *testing.T) {
	srv := httptest.NewServer(Handler("srv"))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/anything", strings.NewReader("payload"))
	req.Header.Set("workload", "empty")
	req.Header.Set("function", `quote"and<tag>`)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	if r.Status != "OK" || r.Function != `quote"and<tag>` || r.MachineName != "srv" {
		t.Errorf("got %+v", r)
	}
}

func TestSpin(t *testing.T) {
	start := time.Now()
	Spin(20 * time.Millisecond)
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("Spin(20ms) returned after %v", d)
	}
	Spin(0)
	Spin(-time.Second)
}

// AppendResponse writes what encoding/json writes, escapes included.
func TestAppendResponseIsJSON(t *testing.T) {
	for _, s := range []string{"", "fn-7", "a\"b", `back\slash`, "<script>&", "tab\there", "é ü", "\u2028", "bad\xffutf8", "\x00\x1f"} {
		r := Response{Status: "OK", Function: s, MachineName: "m " + s, ExecutionTime: 1234}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendResponse(nil, r); string(got) != string(want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	}
}

// Run appends to the buffer it is given: an empty workload answered into a
// reused buffer allocates nothing (the fake runtime's server answers every
// emulated request so).
func TestRunAppendsWithoutAllocating(t *testing.T) {
	buf := make([]byte, 0, 256)
	ctx := t.Context()
	allocs := testing.AllocsPerRun(100, func() {
		_, buf = Run(ctx, buf[:0], "m", "empty", "0", "fn-1")
	})
	if allocs != 0 {
		t.Errorf("%v allocations per Run into a reused buffer, want 0", allocs)
	}
	if status, got := Run(ctx, []byte("kept:"), "m", "empty", "", "f"); status != 200 || !strings.HasPrefix(string(got), `kept:{"Status":"OK","Function":"f"`) {
		t.Errorf("Run appended %d %q", status, got)
	}
}

func TestSleeps(t *testing.T) {
	for _, tc := range []struct {
		kind, cpu string
		want      bool
	}{
		{"sleep", "10", true},
		{"sleep", " 10", true},
		{"sleep", "0", false},
		{"sleep", "00", false},
		{"sleep", "", false},
		{"sleep", "x", false},
		{"empty-sleep", "10", false},
		{"spin", "10", false},
	} {
		if got := Sleeps(tc.kind, tc.cpu); got != tc.want {
			t.Errorf("Sleeps(%q, %q) = %v, want %v", tc.kind, tc.cpu, got, tc.want)
		}
	}
}
