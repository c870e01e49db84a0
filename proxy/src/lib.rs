//! `meridian-proxy`: routes HTTP traffic by the routes and endpoints the control plane streams.
