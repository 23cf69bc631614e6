package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

// applyConfigFile reads a JSON object whose keys are the command's flag names
// ({"listen": "127.0.0.1:9090", "heartbeat-timeout": "5s"}) and sets every
// flag not already given on the command line. An unknown key is an error.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || k == "config" {
			return fmt.Errorf("config file %s: unknown key %q (keys are the flag names of this command)", path, k)
		}
		if set[k] {
			continue // the command line wins
		}
		var vals []string
		raw := m[k]
		var list []any
		if json.Unmarshal(raw, &list) == nil {
			for _, v := range list {
				vals = append(vals, scalar(v))
			}
		} else {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("config file %s: key %q: %w", path, k, err)
			}
			vals = []string{scalar(v)}
		}
		for _, v := range vals {
			if err := fs.Set(k, v); err != nil {
				return fmt.Errorf("config file %s: key %q: %w", path, k, err)
			}
		}
	}
	return nil
}

func scalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		s := fmt.Sprintf("%v", x)
		return strings.TrimSuffix(s, ".0")
	default:
		return fmt.Sprint(x)
	}
}
