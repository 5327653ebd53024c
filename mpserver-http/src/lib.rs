//! HTTP front for `mpserver` flows (work in progress).
