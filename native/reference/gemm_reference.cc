// Placeholder: being written (issue 3).
namespace luna {}
