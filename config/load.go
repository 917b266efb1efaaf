package config

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
)

var (
	scheme        = newScheme()
	strictCodecs  = serializer.NewCodecFactory(scheme, serializer.EnableStrict)
	lenientCodecs = serializer.NewCodecFactory(scheme, serializer.DisableStrict)
)

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(fmt.Sprintf("register kube-proxy config v1alpha1: %v", err))
	}
	return s
}

// Load reads and decodes a KubeProxyConfiguration file (the config.conf of
// the kube-proxy ConfigMap). It does not apply defaults.
func Load(path string) (*v1alpha1.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	cfg, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("decode config file %s: %w", path, err)
	}
	return cfg, nil
}

// Decode decodes a serialized KubeProxyConfiguration strictly. Like
// kube-proxy, when the only problems are unknown or duplicate fields it
// decodes again leniently and logs a warning, so a ConfigMap written for a
// newer kube-proxy still starts; a wrong apiVersion or kind is an error.
func Decode(data []byte) (*v1alpha1.KubeProxyConfiguration, error) {
	obj, err := decodeWith(strictCodecs, data)
	if err != nil {
		if !runtime.IsStrictDecodingError(err) {
			return nil, err
		}
		var lenientErr error
		obj, lenientErr = decodeWith(lenientCodecs, data)
		if lenientErr != nil {
			return nil, fmt.Errorf("%w (lenient decoding also failed: %v)", err, lenientErr)
		}
		klog.InfoS("Warning: using lenient decoding as strict decoding failed", "err", err)
	}
	return obj, nil
}

func decodeWith(codecs serializer.CodecFactory, data []byte) (*v1alpha1.KubeProxyConfiguration, error) {
	obj, gvk, err := codecs.UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		return nil, err
	}
	cfg, ok := obj.(*v1alpha1.KubeProxyConfiguration)
	if !ok {
		return nil, fmt.Errorf("unexpected object %v, want %s KubeProxyConfiguration", gvk, v1alpha1.SchemeGroupVersion)
	}
	return cfg, nil
}

// Encode writes cfg as YAML with apiVersion kubeproxy.config.k8s.io/v1alpha1
// and kind KubeProxyConfiguration.
func Encode(w io.Writer, cfg *v1alpha1.KubeProxyConfiguration) error {
	info, ok := runtime.SerializerInfoForMediaType(strictCodecs.SupportedMediaTypes(), runtime.ContentTypeYAML)
	if !ok {
		return fmt.Errorf("no serializer for %s", runtime.ContentTypeYAML)
	}
	encoder := strictCodecs.EncoderForVersion(info.Serializer, v1alpha1.SchemeGroupVersion)
	// The encoder sets TypeMeta on the object it is given; keep the caller's
	// copy untouched.
	if err := encoder.Encode(cfg.DeepCopy(), w); err != nil {
		return fmt.Errorf("encode configuration: %w", err)
	}
	return nil
}

// Write writes cfg as YAML to path; "-" means stdout.
func Write(cfg *v1alpha1.KubeProxyConfiguration, path string) error {
	if path == "-" {
		return Encode(os.Stdout, cfg)
	}
	var buf bytes.Buffer
	if err := Encode(&buf, cfg); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write configuration: %w", err)
	}
	return nil
}
