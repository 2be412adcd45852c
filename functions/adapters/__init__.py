"""One SDK per module: each adapter takes a ready client and speaks core types and errors."""
