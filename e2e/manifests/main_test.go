// Package manifests tests the deployment manifests (manifests/) and the image
// description (Dockerfile) against what svcproxy reads and calls: the
// ConfigMap decodes through the --config code path, every object is accepted
// by a real kube-apiserver (server-side apply), the kustomizations render, and
// the ClusterRole grants exactly the calls svcproxy makes.
package manifests

import (
	"os"
	"testing"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
