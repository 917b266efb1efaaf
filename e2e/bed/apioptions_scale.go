package bed

// ServiceCIDRs sets the apiserver's --service-cluster-ip-range, e.g. "198.18.0.0/16" for
// the scale harness, whose thousands of Services do not fit the address plan's /24.
func ServiceCIDRs(cidrs string) APIOption {
	return func(c *apiConfig) { c.serviceCIDRs = cidrs }
}
