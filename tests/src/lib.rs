//! netns integration harness
