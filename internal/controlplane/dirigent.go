package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/errdefs"
)

// The Dirigent-compatible front door: the HTTP registration API that
// research tooling written for Dirigent (the vHive load generator's
// branches, Dirigent's scripts) uses, so that it drives Baton unchanged.
//
//	POST <any path>   form: name, image, port_forwarding (port, then protocol),
//	                  scaling_upper_bound, scaling_lower_bound, requested_cpu,
//	                  requested_memory, env_vars, program_args; others ignored.
//	                  200 with the data planes' host:port list joined by ";".
//	GET /check?name=F 200 once F is registered, 404 before.
//	GET /health       200.

func (cp *ControlPlane) dirigentHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/health":
			w.WriteHeader(http.StatusOK)
		case r.Method == http.MethodGet && r.URL.Path == "/check":
			cp.dirigentCheck(w, r)
		case r.Method == http.MethodPost:
			cp.dirigentRegister(w, r)
		default:
			http.Error(w, "use POST (any path) to register a function, GET /check?name=F or GET /health", http.StatusMethodNotAllowed)
		}
	})
}

func (cp *ControlPlane) dirigentCheck(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	var ok bool
	if cp.isLeader() {
		cp.mu.Lock()
		_, ok = cp.functions[name]
		cp.mu.Unlock()
	} else { // a follower answers from its replica of the registry
		_, err := cp.store.Get(r.Context(), name)
		ok = err == nil && ValidName(name) == nil
	}
	if !ok {
		http.Error(w, fmt.Sprintf("function %q is not registered", name), http.StatusNotFound)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (cp *ControlPlane) dirigentRegister(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "malformed form: "+err.Error(), http.StatusBadRequest)
		return
	}
	spec, err := specFromDirigentForm(r.PostForm)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	var addrs []string
	deploy := func() (err error) {
		if _, _, err = cp.deploy(ctx, spec); err == nil {
			addrs = cp.dataPlaneAddrs()
		}
		return err
	}
	if !cp.isLeader() { // any replica takes registrations: forward to the leader
		deploy = func() (err error) { addrs, err = cp.forwardDeploy(ctx, spec); return err }
	}
	if err := deploy(); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, errdefs.ErrInvalid) {
			code = http.StatusBadRequest
		}
		http.Error(w, err.Error(), code)
		return
	}
	sort.Strings(addrs)
	if len(addrs) == 0 {
		// One tool uses the body as is: an empty one would fail every later
		// invocation silently. Say why instead.
		http.Error(w, fmt.Sprintf("function %q registered, but no data plane is connected to invoke it through", spec.Name),
			http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(strings.Join(addrs, ";"))) // no trailing newline: tools use the body as is
}

// dataPlaneAddrs lists the connected data planes' client addresses.
func (cp *ControlPlane) dataPlaneAddrs() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var out []string
	for _, d := range cp.dataPlanes {
		if !d.closed && d.address != "" {
			out = append(out, d.address)
		}
	}
	sort.Strings(out)
	return out
}

// specFromDirigentForm maps a Dirigent registration form to a function spec.
// requested_cpu is in millicores and requested_memory in MiB, as Dirigent
// reads them.
func specFromDirigentForm(f url.Values) (*pb.FunctionSpec, error) {
	bad := func(format string, a ...any) error { return fmt.Errorf(format, a...) }
	s := &pb.FunctionSpec{Name: f.Get("name"), Image: f.Get("image"), Scaling: &pb.ScalingSpec{}}
	if s.Name == "" {
		return nil, bad("field name is missing")
	}
	if s.Image == "" {
		return nil, bad("field image is missing")
	}
	if pf := f["port_forwarding"]; len(pf) > 0 {
		if len(pf) != 2 {
			return nil, bad("field port_forwarding must be given twice, the port then the protocol (got %d values)", len(pf))
		}
		if p, err := strconv.Atoi(pf[0]); err != nil || p < 1 || p > 65535 {
			return nil, bad("port_forwarding port %q is not a port number", pf[0])
		}
		if proto := strings.ToLower(pf[1]); proto != "tcp" && proto != "udp" {
			return nil, bad("port_forwarding protocol %q: use tcp or udp", pf[1])
		}
	}
	num := func(field string, lo int64) (int64, error) {
		v := strings.TrimSpace(f.Get(field))
		if v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < lo {
			return 0, bad("field %s: %q is not an integer >= %d", field, v, lo)
		}
		return n, nil
	}
	var err error
	var n int64
	if n, err = num("scaling_upper_bound", 0); err != nil {
		return nil, err
	}
	s.Scaling.MaxScale = int32(min(n, 1<<30))
	if n, err = num("scaling_lower_bound", 0); err != nil {
		return nil, err
	}
	s.Scaling.MinScale = int32(min(n, 1<<30))
	if s.CpuMillicores, err = num("requested_cpu", 0); err != nil {
		return nil, err
	}
	if s.MemoryMib, err = num("requested_memory", 0); err != nil {
		return nil, err
	}
	for _, kv := range f["env_vars"] {
		for _, item := range strings.FieldsFunc(kv, func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
			k, v, ok := strings.Cut(item, "=")
			if !ok || k == "" {
				return nil, bad("env_vars item %q: want KEY=VALUE", item)
			}
			if s.Env == nil {
				s.Env = map[string]string{}
			}
			s.Env[k] = v
		}
	}
	for _, a := range f["program_args"] {
		s.Args = append(s.Args, strings.Fields(a)...)
	}
	return s, nil
}

// serveDirigent serves the front door on lis until ctx is done.
func (cp *ControlPlane) serveDirigent(ctx context.Context, lis net.Listener) {
	srv := &http.Server{Handler: cp.dirigentHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		cp.log.Error("dirigent front door", "err", err)
	}
}
