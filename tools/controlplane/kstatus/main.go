// Command kstatus prints the verdict of kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status,
// the library Flux and kpt use) for one Kubernetes object or a List read as JSON on
// stdin: one JSON line {"kind","name","status","message"} per object. Exit 2 on bad input.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	// apimachinery's decoder keeps integers as int64, as kstatus's NestedInt64 needs.
	var obj map[string]any
	if err := utiljson.Unmarshal(data, &obj); err != nil {
		fail("stdin is not a JSON object: %v", err)
	} else if obj == nil {
		fail("stdin is not a JSON object: null")
	}
	items := []unstructured.Unstructured{{Object: obj}}
	if top := (&unstructured.Unstructured{Object: obj}); top.IsList() {
		list, err := top.ToList()
		if err != nil {
			fail("bad List: %v", err)
		}
		items = list.Items
	}
	out := make([]verdict, 0, len(items))
	for i := range items {
		u := &items[i]
		if u.GetKind() == "" {
			fail("object %d has no kind", i)
		}
		res, err := status.Compute(u)
		if err != nil {
			fail("%s %q: %v", u.GetKind(), u.GetName(), err)
		}
		out = append(out, verdict{u.GetKind(), u.GetName(), string(res.Status), res.Message})
	}
	enc := json.NewEncoder(os.Stdout)
	for _, v := range out {
		if err := enc.Encode(v); err != nil {
			fail("writing stdout: %v", err)
		}
	}
}
