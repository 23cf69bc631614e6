package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// Research tooling written for Dirigent registers and invokes functions
// exactly like this: a form POST to the registration port (on "/" or on
// "/registerService", depending on the branch), GET /check polling, then
// invocations over h2c with prior knowledge, the function in the Host
// header and the workload headers, parsing the JSON answer.
func TestDirigentCompatibleAPI(t *testing.T) {
	needRoot(t)
	u := startUp(t, t.TempDir(), fmt.Sprintf("dirigent-e2e-%d", os.Getpid()))
	defer u.stop(t)
	reg := "http://" + u.dirigent

	get := func(path string) (int, string) {
		resp, err := http.Get(reg + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/health"); code != 200 {
		t.Fatalf("/health: %d", code)
	}
	if code, _ := get("/check?name=trace-func-0-1234"); code != 404 {
		t.Fatalf("/check before registration: %d, want 404", code)
	}
	register := func(path string, form url.Values) (int, string) {
		resp, err := http.PostForm(reg+path, form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	form := func(name string) url.Values {
		return url.Values{
			"name": {name}, "image": {"docker.io/cvetkovic/dirigent_empty_function:latest"},
			"port_forwarding": {"80", "tcp"}, "scaling_upper_bound": {"200"}, "scaling_lower_bound": {"0"},
			"requested_cpu": {"1000"}, "requested_memory": {"128"}, "cold_start_sweep": {"false"}, "prepull_mode": {"none"},
		}
	}
	for _, c := range []struct{ path, name string }{{"/", "trace-func-0-1234"}, {"/registerService", "trace-func-1-5678"}} {
		code, body := register(c.path, form(c.name))
		if code != 200 || body != u.dp {
			t.Fatalf("register %s on %s: %d %q, want 200 %q (the data plane, nothing else)", c.name, c.path, code, body, u.dp)
		}
		if code, _ := get("/check?name=" + c.name); code != 200 {
			t.Fatalf("/check after registration: %d", code)
		}
	}
	// A re-registration updates the function.
	if code, body := register("/", form("trace-func-0-1234")); code != 200 || body != u.dp {
		t.Fatalf("re-registration: %d %q", code, body)
	}
	bad := form("trace-func-2")
	bad.Set("scaling_upper_bound", "lots")
	if code, body := register("/", bad); code != 400 || !strings.Contains(body, "scaling_upper_bound") {
		t.Fatalf("malformed form: %d %q, want 400 naming the field", code, body)
	}
	if code, _ := get("/check?name=trace-func-2"); code != 404 {
		t.Fatal("a refused registration left a function behind")
	}

	// h2c with prior knowledge, as the load generator's gRPC-less HTTP/2 client does.
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Protocols: &p}}
	type answer struct {
		Status, Function, MachineName string
		ExecutionTime                 int64
	}
	invoke := func(fn, workload string, ms int) answer {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+u.dp+"/", nil)
		req.Host = fn
		req.Header.Set("workload", workload)
		req.Header.Set("function", fn)
		req.Header.Set("requested_cpu", fmt.Sprint(ms))
		req.Header.Set("requested_memory", "128")
		req.Header.Set("multiplier", "0")
		resp, err := h2c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
		}
		b, _ := io.ReadAll(resp.Body)
		var a answer
		if resp.StatusCode != 200 || json.Unmarshal(b, &a) != nil {
			t.Fatalf("invoke %s: %d %q", fn, resp.StatusCode, b)
		}
		return a
	}
	a := invoke("trace-func-0-1234", "empty", 0)
	if a.Status != "OK" || a.Function != "trace-func-0-1234" || a.MachineName == "" {
		t.Fatalf("answer %+v", a)
	}
	// The tools may put the image name in the workload header: trace semantics.
	a = invoke("trace-func-1-5678", "docker.io/cvetkovic/dirigent_trace_function:latest", 30)
	if a.ExecutionTime < 30_000 {
		t.Fatalf("trace workload of 30 ms reported ExecutionTime %d µs", a.ExecutionTime)
	}
}
